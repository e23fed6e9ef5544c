"""Reconstruction error: pixel MSE between x and G(E(x)) in [0, 1], and the same on a feature model's features."""

import contextlib

import tensorflow as tf

from age_tf import inference_statistics
from age_tf.metrics import inputs


def _reconstruct_fn(model, training=False):
  return tf.function(lambda x: model.reconstruct(x, training=training))


def pixel_mse(model, dataset, batch_size=inputs.DEFAULT_BATCH_SIZE, training=False):
  """Mean and std over batches of the per-batch pixel MSE, images scaled to [0, 1].

  `dataset` yields images in [-1, 1], or (images, labels) pairs, or is an
  (N, H, W, C) array (split into batches of `batch_size`); the model
  reconstructs with its encoder mean and inference-mode BatchNorm, or with
  `training` the batch statistics of each batch (training mode; the
  BatchNorm moving statistics that mode updates are restored afterwards).
  """
  return reconstruction_errors(model, dataset, batch_size=batch_size,
                               training=training)["pixel_mse"]


def feature_mse(model, dataset, feature_model, batch_size=inputs.DEFAULT_BATCH_SIZE):
  """Mean and std over batches of the mean squared difference between M(x) and M(G(E(x))).

  `feature_model` maps images in [-1, 1] to (B, D) features (see
  age_tf.features.load_feature_model); the mean is over the batch and the D
  features.
  """
  return reconstruction_errors(model, dataset, feature_model, batch_size)["feature_mse"]


def reconstruction_errors(model, dataset, feature_model=None,
                          batch_size=inputs.DEFAULT_BATCH_SIZE, training=False):
  """{"pixel_mse": (mean, std), "feature_mse": (mean, std) with a feature model, "count": N}.

  One pass over `dataset` (as pixel_mse takes it): each batch is
  reconstructed once (in training mode with `training`, see pixel_mse);
  means and stds are over batches.
  """
  with inference_statistics.preserved(model) if training else contextlib.nullcontext():
    return _errors(model, dataset, feature_model, batch_size, training)


def _errors(model, dataset, feature_model, batch_size, training):
  reconstruct = _reconstruct_fn(model, training)
  features = tf.function(lambda x: feature_model(x, training=False)) if feature_model else None
  pixel, feature, count = [], [], 0
  for images in inputs.image_batches(dataset, batch_size):
    reconstructions = reconstruct(images)
    diff = (reconstructions - images) / 2.0  # the same difference in [0, 1]
    pixel.append(float(tf.reduce_mean(tf.square(diff))))
    if features is not None:
      feature.append(float(tf.reduce_mean(tf.square(features(reconstructions) -
                                                    features(images)))))
    count += int(images.shape[0])
  result = {"pixel_mse": inputs.mean_and_std(pixel, "pixel_mse"), "count": count}
  if features is not None:
    result["feature_mse"] = inputs.mean_and_std(feature, "feature_mse")
  return result
