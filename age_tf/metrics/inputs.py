"""What every metric accepts as images: an array, a tensor, or a dataset of batches (optionally with labels)."""

import numpy as np
import tensorflow as tf

from age_tf import prior as prior_lib

DEFAULT_BATCH_SIZE = 100


def image_batches(images, batch_size=DEFAULT_BATCH_SIZE):
  """Yields float32 image batches in [-1, 1] from `images`.

  `images` is an (N, H, W, C) array or tensor (split into batches of
  `batch_size`), or an iterable of batches such as a tf.data.Dataset, whose
  elements are image batches or (images, labels) pairs.
  """
  if isinstance(images, (np.ndarray, tf.Tensor)):
    images = tf.convert_to_tensor(images, tf.float32)
    for start in range(0, int(images.shape[0]), batch_size):
      yield images[start:start + batch_size]
    return
  for batch in images:
    batch = batch[0] if isinstance(batch, (tuple, list)) else batch
    yield tf.convert_to_tensor(batch, tf.float32)


def map_batches(fn, images, batch_size=DEFAULT_BATCH_SIZE):
  """np.concatenate of fn(batch).numpy() over image_batches(images, batch_size)."""
  outputs = [np.asarray(fn(batch)) for batch in image_batches(images, batch_size)]
  if not outputs:
    raise ValueError("No images to evaluate: the array or dataset is empty.")
  return np.concatenate(outputs)


def mean_and_std(values, what):
  """(mean, std) of per-batch values as floats; ValueError naming `what` when there are none."""
  if not len(values):  # pylint: disable=g-explicit-length-test
    raise ValueError(f"{what}: the array or dataset is empty.")
  return float(np.mean(values)), float(np.std(values))


def prior_codes(rng, model, count):
  """`count` codes of the model's prior from a tf.random.Generator (not the model's own).

  N(0, I), projected onto the unit sphere for the "sphere" prior, as
  BidirectionalModel.sample_prior draws them; a fixed-seed rng gives the
  same codes every evaluation.
  """
  return prior_lib.from_normal(rng.normal([count, model.latent_dim]), model.prior)
