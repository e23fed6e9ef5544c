"""Reconstruction error: pixel MSE between x and G(E(x)) in [0, 1]."""

import numpy as np
import tensorflow as tf


def pixel_mse(model, dataset):
  """Mean and std over batches of the per-batch pixel MSE, images scaled to [0, 1].

  `dataset` yields images in [-1, 1], or (images, labels) pairs; the model
  reconstructs with its encoder mean and inference-mode BatchNorm.
  """
  reconstruct = tf.function(lambda x: model.reconstruct(x, training=False))
  errors = []
  for batch in dataset:
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    diff = (reconstruct(images) - images) / 2.0  # the same difference in [0, 1]
    errors.append(float(tf.reduce_mean(tf.square(diff))))
  if not errors:
    raise ValueError("pixel_mse: the dataset is empty.")
  return float(np.mean(errors)), float(np.std(errors))
