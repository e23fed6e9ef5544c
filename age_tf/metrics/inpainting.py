"""Inpainting: the encoder sees a masked image, G(E(.)) fills the rectangle; pixel and feature MSE of the filled region."""

import numpy as np
import tensorflow as tf

from age_tf import masks as masks_lib
from age_tf.metrics import inputs

SAMPLERS = masks_lib.SAMPLERS


def masks_for(rng, batch_size, image_size, max_size=None, sampler="uniform"):
  """Rectangle masks (B, H, W, 1), 1 inside, (masks.sample).

  sampler "uniform" (height and width uniform in 0..max_size, placed to fit),
  "authors" or "central" (a max_size square in the middle); max_size
  defaults to the image size.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown mask sampler {sampler!r}; valid: {SAMPLERS}.")
  return masks_lib.sample(rng, batch_size, image_size, max_size or image_size, sampler)


def inpaint(model, images, masks, fill=-1.0):
  """(corrupted, restored, inpainted): masked x, G(E(masked x)), and x outside / restored inside."""
  corrupted = masks_lib.apply(images, masks, fill)
  restored = model.reconstruct(corrupted, training=False)
  masks = tf.cast(masks, images.dtype)
  return corrupted, restored, images * (1.0 - masks) + restored * masks


def inpainting_errors(model, dataset, *, sampler="uniform", max_size=None, fill=-1.0, seed=0,
                      feature_model=None, batch_size=inputs.DEFAULT_BATCH_SIZE):
  """Pixel (and feature) MSE of the inpainted region; means and stds over batches.

  Each image of `dataset` (inputs.image_batches: array or dataset, in
  [-1, 1]) gets its own mask from a generator seeded with `seed`. pixel_mse:
  squared error in [0, 1] between the inpainted and the original image,
  averaged over the masked pixels and channels of the batch (a batch whose
  masks are all empty is skipped). feature_mse: the mean squared difference
  between M(inpainted) and M(x) of `feature_model`.

  Returns {"pixel_mse": (mean, std), "feature_mse": (mean, std) with a
  feature model, "count": images, "masked_fraction": mean masked area}.
  """
  rng = tf.random.Generator.from_seed(seed)
  run = tf.function(lambda x, m: inpaint(model, x, m, fill)[2])
  features = tf.function(lambda x: feature_model(x, training=False)) if feature_model else None
  pixel, feature, count, area = [], [], 0, []
  for images in inputs.image_batches(dataset, batch_size):
    size = int(images.shape[1])
    masks = masks_for(rng, int(images.shape[0]), size, max_size, sampler)
    inpainted = run(images, masks)
    squared = tf.square((inpainted - images) / 2.0) * masks  # zero outside the rectangle
    masked_values = float(tf.reduce_sum(masks)) * int(images.shape[-1])
    if masked_values:
      pixel.append(float(tf.reduce_sum(squared)) / masked_values)
    if features is not None:
      feature.append(float(tf.reduce_mean(tf.square(features(inpainted) - features(images)))))
    area.append(float(tf.reduce_mean(masks)))
    count += int(images.shape[0])
  result = {"pixel_mse": inputs.mean_and_std(pixel, "inpainting pixel_mse"), "count": count,
            "masked_fraction": float(np.mean(area)) if area else 0.0}
  if features is not None:
    result["feature_mse"] = inputs.mean_and_std(feature, "inpainting feature_mse")
  return result
