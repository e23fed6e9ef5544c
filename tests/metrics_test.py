"""FID, KID, the SVM protocol, reconstruction and inpainting metrics against independent computations."""

import math

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
from sklearn import svm as sk_svm

from age_tf import data
from age_tf import figures
from age_tf.metrics import classifier_distances as cd
from age_tf.metrics import inpainting
from age_tf.metrics import inputs
from age_tf.metrics import reconstruction
from age_tf.metrics import svm


# ---------------------------------------------------------------- FID


def numpy_fid(a, b):
  """Heusel et al.'s formula with scipy's sqrtm and unbiased covariances (TF-GAN's ddof=1)."""
  mu_a, mu_b = a.mean(0), b.mean(0)
  sigma_a, sigma_b = np.cov(a, rowvar=False, ddof=1), np.cov(b, rowvar=False, ddof=1)
  covmean = scipy.linalg.sqrtm(sigma_a @ sigma_b).real
  return float(np.sum((mu_a - mu_b) ** 2) + np.trace(sigma_a + sigma_b - 2 * covmean))


def gaussian(rng, n, mean, cov):
  return rng.multivariate_normal(mean, cov, size=n)


def test_fid_matches_scipy_and_the_closed_form():
  rng = np.random.default_rng(0)
  d = 8
  a_cov = np.diag(np.linspace(0.5, 2.0, d))
  b_cov = 0.5 * np.eye(d) + 0.1
  a = gaussian(rng, 2000, np.zeros(d), a_cov)
  b = gaussian(rng, 1500, np.full(d, 0.3), b_cov)
  ours = float(cd.frechet_classifier_distance_from_activations(a, b))
  assert ours == pytest.approx(numpy_fid(a, b), rel=1e-9, abs=1e-9)
  # The population value it estimates (within sampling error).
  population = d * 0.09 + np.trace(a_cov + b_cov - 2 * scipy.linalg.sqrtm(a_cov @ b_cov).real)
  assert ours == pytest.approx(population, abs=0.15)
  # float32 in, float32 out, same number (TF-GAN computes in float64 inside).
  ours32 = cd.frechet_classifier_distance_from_activations(a.astype(np.float32),
                                                           b.astype(np.float32))
  assert ours32.dtype == tf.float32
  assert float(ours32) == pytest.approx(numpy_fid(a.astype(np.float32).astype(np.float64),
                                                  b.astype(np.float32).astype(np.float64)),
                                        rel=1e-5)


def test_fid_uses_the_unbiased_covariance():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(50, 4)), 2.0 * rng.normal(size=(50, 4))
  biased = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(
      np.cov(a.T, ddof=0) + np.cov(b.T, ddof=0) - 2 * scipy.linalg.sqrtm(
          np.cov(a.T, ddof=0) @ np.cov(b.T, ddof=0)).real))
  ours = float(cd.frechet_classifier_distance_from_activations(a, b))
  assert ours == pytest.approx(numpy_fid(a, b), rel=1e-9)
  assert abs(ours - biased) > 1e-3


def test_fid_of_identical_sets_is_zero():
  a = np.random.default_rng(2).normal(size=(300, 16))
  assert abs(float(cd.frechet_classifier_distance_from_activations(a, a))) < 1e-6
  # Shifting every activation by c adds |c|^2 exactly.
  shift = np.full(16, 0.5)
  assert float(cd.frechet_classifier_distance_from_activations(a, a + shift)) == (
      pytest.approx(16 * 0.25, abs=1e-6))


# ---------------------------------------------------------------- KID


def numpy_kid_block(r, g):
  """The unbiased MMD^2 estimate with k(x, y) = (x.y / d + 1)^3, written out with loops."""
  d = r.shape[1]
  k = lambda x, y: (x @ y / d + 1.0) ** 3
  m, n = len(r), len(g)
  rr = sum(k(r[i], r[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  gg = sum(k(g[i], g[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  rg = sum(k(r[i], g[j]) for i in range(m) for j in range(n)) / (m * n)
  return rr + gg - 2 * rg


def numpy_kid(r, g, max_block_size):
  """TF-GAN's blocking (same number of blocks; the last ones one larger), mean and std error."""
  n_blocks = math.ceil(max(len(r), len(g)) / max_block_size)

  def bounds(n):
    v, plus = n // n_blocks, n % n_blocks
    sizes = [v] * (n_blocks - plus) + [v + 1] * plus
    return np.concatenate([[0], np.cumsum(sizes)])

  br, bg = bounds(len(r)), bounds(len(g))
  ests = np.array([numpy_kid_block(r[br[i]:br[i + 1]], g[bg[i]:bg[i + 1]])
                   for i in range(n_blocks)])
  std = math.sqrt(ests.var(ddof=1) / n_blocks) if n_blocks > 1 else float("nan")
  return ests.mean(), std


def test_kid_matches_an_independent_computation_with_uneven_blocks():
  rng = np.random.default_rng(3)
  r = rng.normal(size=(103, 5))
  g = rng.normal(0.4, 1.2, size=(77, 5))
  for block in (20, 40, 1024):
    kid, std = cd.kernel_classifier_distance_and_std_from_activations(r, g, block)
    want_kid, want_std = numpy_kid(r, g, block)
    assert float(kid) == pytest.approx(want_kid, rel=1e-9, abs=1e-12)
    if math.isnan(want_std):
      assert math.isnan(float(std))  # one block: no std, as TF-GAN
    else:
      assert float(std) == pytest.approx(want_std, rel=1e-9)
  assert float(cd.kernel_classifier_distance_from_activations(r, g, 40)) == pytest.approx(
      numpy_kid(r, g, 40)[0], rel=1e-9)


def test_kid_of_identical_and_of_same_distribution_sets_is_near_zero():
  rng = np.random.default_rng(4)
  a = rng.normal(size=(1000, 16))
  # One block of identical sets: the unbiased estimate is -2 (mean k(x, x) - mean k(x, y)) / m.
  kid, std = cd.kernel_classifier_distance_and_std_from_activations(a, a)
  k = (a @ a.T / 16 + 1) ** 3
  off_diagonal = (k.sum() - np.trace(k)) / (1000 * 999)
  assert float(kid) == pytest.approx(-2 * (np.trace(k) / 1000 - off_diagonal) / 1000, rel=1e-9)
  assert abs(float(kid)) < 0.02 and math.isnan(float(std))
  b = rng.normal(size=(1000, 16))
  kid_same, std_same = cd.kernel_classifier_distance_and_std_from_activations(a, b, 100)
  kid_far, _ = cd.kernel_classifier_distance_and_std_from_activations(a, b + 1.0, 100)
  assert abs(float(kid_same)) < 3 * float(std_same) + 1e-3
  assert float(kid_far) > 20 * float(std_same)


def test_kid_dtype_rules_and_defaults():
  a = np.random.default_rng(5).normal(size=(40, 3))
  with pytest.raises(ValueError, match="pass dtype"):
    cd.kernel_classifier_distance_and_std_from_activations(a, a.astype(np.float32))
  kid, _ = cd.kernel_classifier_distance_and_std_from_activations(
      a.astype(np.float32), a, 10, dtype=tf.float64)
  assert kid.dtype == tf.float64
  assert cd.default_block_size(1000) == 100 and cd.default_block_size(50000) == 1024
  result = cd.fid_and_kid(a, a + 1.0)
  assert result["kid_blocks"] == 10 and all(np.isfinite(v) for v in result.values())


# ---------------------------------------------------------------- SVM


def synthetic(rng, n, d, classes, spread):
  centers = rng.normal(size=(classes, d)) * 3.0
  labels = np.arange(n) % classes
  return centers[labels] + spread * rng.normal(size=(n, d)), labels


def test_svm_protocol_on_separable_features_is_near_zero_error():
  rng = np.random.default_rng(6)
  x, y = synthetic(rng, 1500, 64, 10, 0.3)
  result = svm.linear_svm_error(x[:1000], y[:1000], x[1000:1200], y[1000:1200], x[1200:],
                                y[1200:], per_class=5, repeats=5, c_values=svm.c_grid(11))
  assert result["error"] < 0.01
  assert len(result["errors"]) == 5 and result["labelled"] == 50 and result["test"] == 300


def test_svm_protocol_on_random_features_is_chance():
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(2000, 50)), rng.integers(0, 10, size=2000)
  result = svm.linear_svm_error(x[:1000], y[:1000], x[1000:1300], y[1000:1300], x[1300:],
                                y[1300:], per_class=10, repeats=5, c_values=svm.c_grid(11))
  assert 0.8 < result["error"] < 0.97  # chance: 0.9


def test_svm_span_projection_gives_the_full_dimensional_svm():
  """LinearSVC on the labelled set's span coordinates predicts as LinearSVC on the raw features."""
  rng = np.random.default_rng(8)
  x, y = synthetic(rng, 60, 400, 3, 2.0)
  held_out = rng.normal(size=(100, 400)) * 3.0
  basis = svm.span_basis(x)
  np.testing.assert_allclose(basis.T @ basis, np.eye(basis.shape[1]), atol=1e-8)
  for c in (1e-4, 1e-1, 10.0):
    full = sk_svm.LinearSVC(C=c, dual=True, random_state=0, max_iter=10000).fit(x, y)
    projected = sk_svm.LinearSVC(C=c, dual=True, random_state=0, max_iter=10000).fit(
        x @ basis, y)
    np.testing.assert_allclose(held_out @ (basis @ projected.coef_.T) + projected.intercept_,
                               full.decision_function(held_out), rtol=1e-6, atol=1e-6)


def test_svm_refuses_a_pool_with_too_few_examples_of_a_class():
  x, y = np.zeros((30, 4)), np.repeat([0, 1, 2], 10)
  with pytest.raises(ValueError, match="fewer than 20 examples"):
    svm.linear_svm_error(x, y, x, y, x, y, per_class=20, repeats=1)


# ---------------------------------------------------------------- model metrics


class LinearModel:
  """A stand-in for a method: encode/generate/reconstruct with known outputs."""

  latent_dim, prior = 4, "gaussian"

  def __init__(self, scale):
    self.scale = scale

  def encode(self, images, training=False):
    return tf.reshape(images, [tf.shape(images)[0], -1])[:, :4]

  def generate(self, codes, training=False):
    return tf.zeros([tf.shape(codes)[0], 4, 4, 1]) + tf.reduce_mean(codes)

  def reconstruct(self, images, training=False):
    return images * self.scale


def test_svm_protocol_arrays_hold_out_the_last_training_images_for_validation():
  spec = data.get_spec("digits")
  pool, pool_y, validation, validation_y, test, test_y = svm.protocol_arrays(spec, 300)
  train = list(data.labelled_dataset(spec, "train", 500))
  train_x = np.concatenate([x.numpy() for x, _ in train])
  train_y = np.concatenate([y.numpy() for _, y in train])
  assert (len(pool), len(validation), len(test)) == (spec.num_train - 300, 300, spec.num_test)
  np.testing.assert_array_equal(np.concatenate([pool, validation]), train_x)
  np.testing.assert_array_equal(np.concatenate([pool_y, validation_y]), train_y)
  test_batches = list(data.labelled_dataset(spec, "test", 500))
  np.testing.assert_array_equal(test, np.concatenate([x.numpy() for x, _ in test_batches]))
  np.testing.assert_array_equal(test_y, np.concatenate([y.numpy() for _, y in test_batches]))
  assert test.dtype == np.float32 and test.min() >= -1.0 and test.max() <= 1.0


def test_reconstruction_errors_on_arrays_and_datasets():
  images = np.random.default_rng(9).uniform(-1, 1, size=(30, 4, 4, 1)).astype(np.float32)
  model = LinearModel(0.5)
  want = float(np.mean(((images * 0.5 - images) / 2.0) ** 2))
  mean, _ = reconstruction.pixel_mse(model, images, batch_size=30)
  assert mean == pytest.approx(want, rel=1e-5)
  ds = tf.data.Dataset.from_tensor_slices((images, np.zeros(30))).batch(10)
  errors = reconstruction.reconstruction_errors(model, ds, feature_model=lambda x, training: 2 * x)
  assert errors["count"] == 30
  assert errors["pixel_mse"][0] == pytest.approx(want, rel=1e-5)
  assert errors["feature_mse"][0] == pytest.approx(16 * want, rel=1e-5)  # (2 * 2)^2 in [-1, 1]
  assert reconstruction.pixel_mse(LinearModel(1.0), images)[0] == 0.0


def test_inpainting_error_counts_only_the_masked_region():
  images = np.random.default_rng(10).uniform(-1, 1, size=(20, 8, 8, 1)).astype(np.float32)
  # central 4x4 boxes; the model outputs zeros there, so the error is the pixels' own.
  result = inpainting.inpainting_errors(LinearModel(0.0), images, sampler="central",
                                        max_size=4, batch_size=20)
  want = float(np.mean((images[:, 2:6, 2:6] / 2.0) ** 2))
  assert result["pixel_mse"][0] == pytest.approx(want, rel=1e-5)
  assert result["masked_fraction"] == pytest.approx(16 / 64)
  # GALI-mix's uniform rectangles: the same per-pixel error over whatever was masked.
  uniform = inpainting.inpainting_errors(LinearModel(0.0), np.ones_like(images), seed=3)
  assert uniform["pixel_mse"][0] == pytest.approx(0.25, rel=1e-6)
  assert 0.0 < uniform["masked_fraction"] < 1.0


def test_slerp_stays_on_the_sphere_and_hits_the_endpoints():
  rng = np.random.default_rng(11)
  z0, z1 = rng.normal(size=(5, 6)), rng.normal(size=(5, 6))
  z0 /= np.linalg.norm(z0, axis=1, keepdims=True)
  z1 /= np.linalg.norm(z1, axis=1, keepdims=True)
  path = figures.slerp(z0, z1, np.linspace(0, 1, 7))
  np.testing.assert_allclose(np.linalg.norm(path, axis=-1), 1.0, atol=1e-12)
  np.testing.assert_allclose(path[:, 0], z0, atol=1e-12)
  np.testing.assert_allclose(path[:, -1], z1, atol=1e-12)
  # Equal angles between successive points.
  angles = np.arccos(np.clip(np.sum(path[:, 1:] * path[:, :-1], -1), -1, 1))
  np.testing.assert_allclose(angles, angles[:, :1] * np.ones_like(angles), atol=1e-9)


def test_code_statistics_plot_is_an_rgb_image():
  image = figures.code_statistics_plot(np.linspace(-0.1, 0.1, 10), np.full(10, 0.08), 0.1, "t")
  assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
  assert (image == [220, 30, 30]).all(-1).any()  # the red target lines are drawn


def test_prior_codes_follow_the_prior():
  rng = tf.random.Generator.from_seed(0)
  model = LinearModel(1.0)
  model.prior = "sphere"
  z = inputs.prior_codes(rng, model, 50).numpy()
  np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)
