"""FID and KID from a feature model's activations, computed exactly as TF-GAN defines them.

tensorflow-gan does not import on TensorFlow >= 2.16 (it imports tf.estimator), so the
two functions of tensorflow_gan/python/eval/classifier_metrics.py that the
papers' numbers come from are restated here with the same arguments and the
same arithmetic:

* frechet_classifier_distance_from_activations: float64 means and unbiased
  (n - 1) covariances, |m - m_w|^2 + Tr(C + C_w) - 2 Tr(sqrt(C C_w)), the
  square root taken through two SVD-based symmetric square roots
  (trace_sqrt_product); the result is cast back to the activations' dtype.
* kernel_classifier_distance_and_std_from_activations: the polynomial kernel
  k(x, y) = (x.y / d + 1)^3, both sets split into the same number of blocks
  (ceil(max(n_r, n_g) / max_block_size); the first blocks one smaller when
  the split is uneven), the unbiased MMD^2 estimate per block, and the mean
  of the blocks with the standard error sqrt(var / n_blocks) (var with the
  Bessel correction; NaN for a single block).

The blocks are taken in the given order: pass activations in random order.
"""

import math

import numpy as np
import tensorflow as tf

from age_tf.metrics import inputs

DEFAULT_MAX_BLOCK_SIZE = 1024  # TF-GAN's


def _symmetric_matrix_square_root(mat, eps=1e-10):
  """sqrt of a symmetric PSD matrix via SVD; singular values under eps are kept, not rooted."""
  s, u, v = tf.linalg.svd(mat)
  si = tf.where(tf.less(s, eps), s, tf.sqrt(s))
  return tf.matmul(tf.matmul(u, tf.linalg.tensor_diag(si)), v, transpose_b=True)


def trace_sqrt_product(sigma, sigma_v):
  """Tr(sqrt(sigma sigma_v)) = Tr(sqrt(A sigma_v A)) with A = sqrt(sigma) (both symmetric)."""
  sqrt_sigma = _symmetric_matrix_square_root(sigma)
  sqrt_a_sigmav_a = tf.matmul(sqrt_sigma, tf.matmul(sigma_v, sqrt_sigma))
  return tf.linalg.trace(_symmetric_matrix_square_root(sqrt_a_sigmav_a))


def frechet_classifier_distance_from_activations(real_activations, generated_activations):
  """FID between two (N, D) activation sets: TF-GAN's definition (see the module doc).

  Returns a scalar tensor of the real activations' dtype.
  """
  real_activations = tf.convert_to_tensor(real_activations)
  generated_activations = tf.convert_to_tensor(generated_activations)
  real_activations.shape.assert_has_rank(2)
  generated_activations.shape.assert_has_rank(2)

  activations_dtype = real_activations.dtype
  real_activations = tf.cast(real_activations, tf.float64)
  generated_activations = tf.cast(generated_activations, tf.float64)

  m = tf.reduce_mean(real_activations, axis=0)
  m_w = tf.reduce_mean(generated_activations, axis=0)
  num_examples_real = tf.cast(tf.shape(real_activations)[0], tf.float64)
  num_examples_generated = tf.cast(tf.shape(generated_activations)[0], tf.float64)

  # sigma = (1 / (n - 1)) * (X - mu)^T (X - mu)
  real_centered = real_activations - m
  sigma = tf.matmul(real_centered, real_centered, transpose_a=True) / (num_examples_real - 1)
  gen_centered = generated_activations - m_w
  sigma_w = tf.matmul(gen_centered, gen_centered, transpose_a=True) / (
      num_examples_generated - 1)

  sqrt_trace_component = trace_sqrt_product(sigma, sigma_w)
  trace = tf.linalg.trace(sigma + sigma_w) - 2.0 * sqrt_trace_component
  mean = tf.reduce_sum(tf.math.squared_difference(m, m_w))
  fid = trace + mean
  if activations_dtype != tf.float64:
    fid = tf.cast(fid, activations_dtype)
  return fid


def kernel_classifier_distance_and_std_from_activations(
    real_activations, generated_activations, max_block_size=DEFAULT_MAX_BLOCK_SIZE,
    dtype=None):
  """KID and its standard error between two (N, D) activation sets: TF-GAN's definition.

  `dtype`: None computes in the activations' dtype (TF-GAN's default; both
  must match), else both are cast to it first. Returns (kid, std) scalar
  tensors; std is NaN when there is only one block (N <= max_block_size).
  """
  real_activations = tf.convert_to_tensor(real_activations)
  generated_activations = tf.convert_to_tensor(generated_activations)
  real_activations.shape.assert_has_rank(2)
  generated_activations.shape.assert_has_rank(2)
  real_activations.shape[1:].assert_is_compatible_with(generated_activations.shape[1:])
  if dtype is None:
    dtype = real_activations.dtype
    if generated_activations.dtype != dtype:
      raise ValueError(f"real activations are {dtype.name} but generated activations are "
                       f"{generated_activations.dtype.name}; pass dtype= to cast both.")
  else:
    dtype = tf.as_dtype(dtype)
    real_activations = tf.cast(real_activations, dtype)
    generated_activations = tf.cast(generated_activations, dtype)

  # Blocks of nearly equal size, none larger than max_block_size, the same
  # number for both sets; the last n_plusone blocks hold one more.
  n_r = int(real_activations.shape[0])
  n_g = int(generated_activations.shape[0])
  n_blocks = int(math.ceil(max(n_r, n_g) / max_block_size))
  v_r, v_g = n_r // n_blocks, n_g // n_blocks
  n_plusone_r, n_plusone_g = n_r - v_r * n_blocks, n_g - v_g * n_blocks
  sizes_r = [v_r] * (n_blocks - n_plusone_r) + [v_r + 1] * n_plusone_r
  sizes_g = [v_g] * (n_blocks - n_plusone_g) + [v_g + 1] * n_plusone_g
  inds_r = np.concatenate([[0], np.cumsum(sizes_r)])
  inds_g = np.concatenate([[0], np.cumsum(sizes_g)])

  dim = tf.cast(real_activations.shape[1], dtype)

  def compute_kid_block(i):
    """The unbiased MMD^2 estimate of block i."""
    r = real_activations[inds_r[i]:inds_r[i + 1]]
    m = tf.cast(inds_r[i + 1] - inds_r[i], dtype)
    g = generated_activations[inds_g[i]:inds_g[i + 1]]
    n = tf.cast(inds_g[i + 1] - inds_g[i], dtype)
    k_rr = (tf.matmul(r, r, transpose_b=True) / dim + 1) ** 3
    k_rg = (tf.matmul(r, g, transpose_b=True) / dim + 1) ** 3
    k_gg = (tf.matmul(g, g, transpose_b=True) / dim + 1) ** 3
    return (-2 * tf.reduce_mean(k_rg) +
            (tf.reduce_sum(k_rr) - tf.linalg.trace(k_rr)) / (m * (m - 1)) +
            (tf.reduce_sum(k_gg) - tf.linalg.trace(k_gg)) / (n * (n - 1)))

  ests = tf.stack([compute_kid_block(i) for i in range(n_blocks)])
  mn = tf.reduce_mean(ests)
  n_blocks_ = tf.cast(n_blocks, dtype)
  if n_blocks <= 1:
    var = tf.constant(float("nan"), dtype=dtype)
  else:  # with the Bessel correction, as TF-GAN
    var = tf.reduce_sum(tf.square(ests - mn)) / (n_blocks_ - 1)
  return mn, tf.sqrt(var / n_blocks_)


def kernel_classifier_distance_from_activations(real_activations, generated_activations,
                                                max_block_size=DEFAULT_MAX_BLOCK_SIZE,
                                                dtype=None):
  """KID alone (kernel_classifier_distance_and_std_from_activations's first value)."""
  return kernel_classifier_distance_and_std_from_activations(
      real_activations, generated_activations, max_block_size, dtype)[0]


# ------------------------------------------------------------- from images


def activations(feature_model, images, batch_size=inputs.DEFAULT_BATCH_SIZE):
  """(N, D) float32 numpy activations of `images` (array or dataset, inputs.image_batches)."""
  run = tf.function(lambda x: feature_model(x, training=False))
  return inputs.map_batches(run, images, batch_size)


def sample_activations(model, feature_model, count, seed, batch_size=inputs.DEFAULT_BATCH_SIZE):
  """Activations of `count` samples G(z), z from the model's prior drawn with `seed`."""
  rng = tf.random.Generator.from_seed(seed)
  generate = tf.function(lambda z: feature_model(model.generate(z, training=False),
                                                 training=False))
  outputs = []
  for start in range(0, count, batch_size):
    z = inputs.prior_codes(rng, model, min(batch_size, count - start))
    outputs.append(generate(z).numpy())
  return np.concatenate(outputs)


def fid_and_kid(real_activations, generated_activations, max_block_size=None):
  """{"fid", "kid", "kid_std", "kid_blocks"} as floats, in float64.

  max_block_size defaults to TF-GAN's 1024 but at most a tenth of the larger
  set (rounded up), so the KID std always has at least 10 blocks.
  """
  real = np.asarray(real_activations, np.float64)
  generated = np.asarray(generated_activations, np.float64)
  if max_block_size is None:
    max_block_size = default_block_size(max(len(real), len(generated)))
  fid = frechet_classifier_distance_from_activations(real, generated)
  kid, kid_std = kernel_classifier_distance_and_std_from_activations(
      real, generated, max_block_size)
  return {"fid": float(fid), "kid": float(kid), "kid_std": float(kid_std),
          "kid_blocks": int(math.ceil(max(len(real), len(generated)) / max_block_size))}


def default_block_size(count):
  """TF-GAN's 1024, but at most ceil(count / 10) so there are at least 10 blocks."""
  return max(2, min(DEFAULT_MAX_BLOCK_SIZE, int(math.ceil(count / 10))))
