"""The KL estimators and reconstruction losses against independent numpy/scipy computations."""

import math

import numpy as np
import pytest
import tensorflow as tf
from scipy import special
from sklearn.neighbors import NearestNeighbors

from age_tf import divergences


def numpy_moments_kl(codes, reduction):
  """Paper eq. 8 as the authors code it, written out in float64 numpy."""
  codes = np.asarray(codes, np.float64)
  m = codes.mean(axis=0)
  v = ((codes - m) ** 2).mean(axis=0)  # biased variance
  per_dim = (v ** 2 + m ** 2) / 2 - np.log(v) - 0.5
  return per_dim.mean() if reduction == "mean" else per_dim.sum()


def numpy_knn_kl(codes):
  """Kozachenko-Leonenko KL(Q || N(0, I)) with scipy's digamma and sklearn's neighbours."""
  codes = np.asarray(codes, np.float64)
  n, dim = codes.shape
  distances, _ = NearestNeighbors(n_neighbors=2).fit(codes).kneighbors(codes)
  rho = distances[:, 1]  # the nearest OTHER point
  log_ball = dim / 2 * np.log(np.pi) - special.gammaln(dim / 2 + 1)
  entropy = dim * np.mean(np.log(rho)) + log_ball + special.digamma(n) - special.digamma(1)
  cross_entropy = np.mean((codes ** 2).sum(axis=1)) / 2 + dim / 2 * np.log(2 * np.pi)
  return cross_entropy - entropy


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape,scale,shift", [((64, 128), 0.1, 0.0), ((100, 10), 2.0, 0.5),
                                               ((7, 3), 0.5, -1.0)])
def test_moments_kl_matches_numpy(reduction, shape, scale, shift):
  codes = np.random.default_rng(0).normal(shift, scale, shape).astype(np.float32)
  got = float(divergences.moments_kl(tf.constant(codes), reduction))
  np.testing.assert_allclose(got, numpy_moments_kl(codes, reduction), rtol=1e-5, atol=1e-5)


def test_moments_kl_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  codes = rng.normal(0.2, 0.7, (16, 4))
  x = tf.Variable(codes.astype(np.float64))
  with tf.GradientTape() as tape:
    kl = divergences.moments_kl(x)
  grad = tape.gradient(kl, x).numpy()
  numeric = np.zeros_like(codes)
  eps = 1e-6
  for idx in np.ndindex(*codes.shape):
    up, down = codes.copy(), codes.copy()
    up[idx] += eps
    down[idx] -= eps
    numeric[idx] = (numpy_moments_kl(up, "mean") - numpy_moments_kl(down, "mean")) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("latent_dim", [10, 64, 128])
def test_ideal_sphere_kl_is_the_estimator_on_uniform_sphere_codes(latent_dim):
  rng = np.random.default_rng(2)
  z = rng.standard_normal((200000, latent_dim))
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  estimate = float(divergences.moments_kl(tf.constant(z, tf.float32)))
  assert estimate == pytest.approx(divergences.ideal_sphere_kl(latent_dim), abs=2e-3)
  # log M - 1/2 + 1/(2 M^2) for M = 128 and M = 64.
  assert divergences.ideal_sphere_kl(128) == pytest.approx(4.352, abs=1e-3)
  assert divergences.ideal_sphere_kl(64) == pytest.approx(3.659, abs=1e-3)


@pytest.mark.parametrize("shape", [(64, 10), (128, 3), (50, 64)])
def test_knn_kl_matches_numpy(shape):
  codes = np.random.default_rng(3).normal(0.1, 0.8, shape)
  got = float(divergences.knn_kl(tf.constant(codes, tf.float64), reduction="sum"))
  np.testing.assert_allclose(got, numpy_knn_kl(codes), rtol=1e-6, atol=1e-6)
  got_mean = float(divergences.knn_kl(tf.constant(codes, tf.float64), reduction="mean"))
  np.testing.assert_allclose(got_mean, numpy_knn_kl(codes) / shape[1], rtol=1e-6)


def test_knn_kl_estimates_the_true_gaussian_kl():
  """On N(0, s^2 I) samples it approaches the closed form M/2 (s^2 - 1 - 2 log s)."""
  rng = np.random.default_rng(4)
  dim = 2
  for scale in (1.0, 2.0):
    codes = rng.normal(0.0, scale, (4000, dim))
    true_kl = dim / 2 * (scale ** 2 - 1 - 2 * math.log(scale))
    got = float(divergences.knn_kl(tf.constant(codes, tf.float32), reduction="sum"))
    assert got == pytest.approx(true_kl, abs=0.08)


def test_kl_and_moments_returns_the_batch_moments_for_both_estimators():
  codes = np.random.default_rng(5).normal(0.3, 0.5, (32, 6)).astype(np.float32)
  for estimator in divergences.KL_ESTIMATORS:
    _, mean, var = divergences.kl_and_moments(tf.constant(codes), estimator)
    np.testing.assert_allclose(mean, codes.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, codes.var(0), rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="valid"):
    divergences.kl_and_moments(tf.constant(codes), "parzen")


def test_reconstruction_losses_match_numpy():
  rng = np.random.default_rng(6)
  a = rng.normal(size=(8, 5)).astype(np.float32)
  b = rng.normal(size=(8, 5)).astype(np.float32)
  np.testing.assert_allclose(divergences.reconstruction_loss(a, b, "l1"), np.abs(a - b).mean(),
                             rtol=1e-6)
  np.testing.assert_allclose(divergences.reconstruction_loss(a, b, "l2"), ((a - b) ** 2).mean(),
                             rtol=1e-6)
  an = a / np.linalg.norm(a, axis=1, keepdims=True)
  bn = b / np.linalg.norm(b, axis=1, keepdims=True)
  # The authors' cos: 2 - mean over batch AND dimensions of the normalised product.
  np.testing.assert_allclose(divergences.reconstruction_loss(a, b, "cos"),
                             2 - (an * bn).mean(), rtol=1e-6)
  np.testing.assert_allclose(divergences.reconstruction_loss(a, a, "cos"), 2 - 1 / 5, rtol=1e-6)
  with pytest.raises(ValueError, match="valid"):
    divergences.reconstruction_loss(a, b, "huber")
