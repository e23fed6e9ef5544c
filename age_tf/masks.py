"""Rectangle masks: how they are drawn and applied (masked encoder inputs, inpainting, restoration figures)."""

import tensorflow as tf

SAMPLERS = ("uniform", "authors", "central")


def sample(rng, batch_size, image_size, max_size, sampler):
  """Rectangle masks (B, H, W, 1), 1 inside, from `rng` (anything with .uniform(shape)).

  uniform: height and width uniform in 0..max_size, the corner uniform so the
  rectangle fits. authors: the same, but the horizontal range computed from
  the height (the GALI authors' bug). central: a max_size square in the middle.
  """
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown mask sampler {sampler!r}; valid: {SAMPLERS}.")
  if sampler == "central":
    start = (image_size - max_size) // 2
    inside = tf.logical_and(tf.range(image_size) >= start, tf.range(image_size) < start + max_size)
    box = tf.cast(tf.logical_and(inside[:, None], inside[None, :]), tf.float32)
    return tf.tile(box[None, :, :, None], [batch_size, 1, 1, 1])

  def uniform_int(high):  # integers uniform in 0..high (inclusive), per sample
    u = rng.uniform([batch_size])
    return tf.minimum(tf.floor(u * (tf.cast(high, tf.float32) + 1.0)), tf.cast(high, tf.float32))

  height, width = uniform_int(max_size), uniform_int(max_size)
  top = uniform_int(image_size - height)
  left = uniform_int(image_size - (height if sampler == "authors" else width))
  pixels = tf.range(image_size, dtype=tf.float32)
  rows = tf.logical_and(pixels[None] >= top[:, None], pixels[None] < (top + height)[:, None])
  cols = tf.logical_and(pixels[None] >= left[:, None], pixels[None] < (left + width)[:, None])
  masks = tf.logical_and(rows[:, :, None], cols[:, None, :])
  return tf.cast(masks, tf.float32)[..., None]


def apply(images, masks, fill):
  """Images with the masked rectangle set to `fill`."""
  masks = tf.cast(masks, images.dtype)
  return images * (1.0 - masks) + fill * masks
