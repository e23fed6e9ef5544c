"""Image grids (samples; real | reconstruction pairs) and atomic PNG files."""

import numpy as np
import tensorflow as tf

from age_tf import files
from age_tf.data import to_uint8


def grid(images, columns=8):
  """Tiles (N, H, W, C) images in [-1, 1] into one uint8 (rows*H, columns*W, C) image.

  Missing tiles at the end are left black.
  """
  images = np.asarray(to_uint8(images))
  count, height, width, channels = images.shape
  rows = -(-count // columns)
  canvas = np.zeros((rows * height, columns * width, channels), np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
  return canvas


def interleave(real, reconstruction):
  """[r0, g0, r1, g1, ...]: in an even-column grid, odd columns real, even reconstructions."""
  real, reconstruction = np.asarray(real), np.asarray(reconstruction)
  pairs = np.stack([real, reconstruction], axis=1)
  return pairs.reshape((-1,) + real.shape[1:])


def write_png(path, image):
  """Writes a uint8 (H, W, C) image atomically: a reader never sees a partial file."""
  files.atomic_write(path, tf.io.encode_png(image).numpy())
