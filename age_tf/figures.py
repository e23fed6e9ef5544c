"""The evaluation figures as uint8 images: samples, reconstructions, interpolations, restorations, code statistics."""

import numpy as np
import tensorflow as tf
from PIL import Image
from PIL import ImageDraw

from age_tf import images as images_lib
from age_tf.metrics import inpainting
from age_tf.metrics import inputs

COLUMNS = 8


def samples(model, count=64, seed=0, columns=COLUMNS):
  """A grid of G(z) for `count` codes of the prior drawn from a generator seeded with `seed`."""
  z = inputs.prior_codes(tf.random.Generator.from_seed(seed), model, count)
  return images_lib.grid(model.generate(z, training=False), columns)


def reconstructions(model, images, columns=COLUMNS):
  """Real | G(E(x)) pairs: in a grid of an even number of columns, odd columns real (1-based)."""
  recon = model.reconstruct(images, training=False)
  return images_lib.grid(images_lib.interleave(images, recon), columns)


def slerp(z0, z1, t):
  """Spherical interpolation between rows of z0 and z1 at fractions t (T,): (B, T, M).

  Along the great circle through the two codes (their norms interpolated
  linearly), so unit codes stay on the unit sphere; nearly parallel codes are
  interpolated linearly.
  """
  z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
  n0 = np.linalg.norm(z0, axis=-1, keepdims=True)
  n1 = np.linalg.norm(z1, axis=-1, keepdims=True)
  u0, u1 = z0 / np.maximum(n0, 1e-12), z1 / np.maximum(n1, 1e-12)
  omega = np.arccos(np.clip(np.sum(u0 * u1, -1, keepdims=True), -1.0, 1.0))[:, None]  # B,1,1
  t = np.asarray(t, np.float64)[None, :, None]  # 1,T,1
  small = np.abs(np.sin(omega)) < 1e-6
  sin = np.where(small, 1.0, np.sin(omega))
  a = np.where(small, 1.0 - t, np.sin((1.0 - t) * omega) / sin)
  b = np.where(small, t, np.sin(t * omega) / sin)
  direction = a * u0[:, None] + b * u1[:, None]
  norm = (1.0 - t) * n0[:, None] + t * n1[:, None]
  return direction * norm


def lerp(z0, z1, t):
  """Linear interpolation between rows of z0 and z1 at fractions t (T,): (B, T, M)."""
  z0, z1 = np.asarray(z0, np.float64), np.asarray(z1, np.float64)
  t = np.asarray(t, np.float64)[None, :, None]
  return (1.0 - t) * z0[:, None] + t * z1[:, None]


def interpolations(model, start, end, steps=COLUMNS):
  """One row per pair: start image, G of `steps` codes from E(start) to E(end), end image.

  Spherical interpolation for the sphere prior, linear otherwise. The grid
  has steps + 2 columns; the second and second-to-last are the reconstructions.
  """
  t = np.linspace(0.0, 1.0, steps)
  z0 = model.encode(start, training=False).numpy()
  z1 = model.encode(end, training=False).numpy()
  path = (slerp if model.prior == "sphere" else lerp)(z0, z1, t)
  pairs, size = path.shape[0], path.shape[-1]
  generated = model.generate(tf.constant(path.reshape(-1, size), tf.float32), training=False)
  generated = tf.reshape(generated, [pairs, steps] + list(generated.shape[1:]))
  rows = tf.concat([tf.cast(start, generated.dtype)[:, None], generated,
                    tf.cast(end, generated.dtype)[:, None]], axis=1)
  return images_lib.grid(tf.reshape(rows, [-1] + list(generated.shape[2:])), steps + 2)


def restorations(model, images, masks, fill=-1.0, columns=COLUMNS):
  """Corrupted inputs and G(E(corrupted)) (AGE Fig. 8c): rows alternate corrupted, restored."""
  corrupted, restored, _ = inpainting.inpaint(model, images, masks, fill)
  count = int(images.shape[0]) // columns * columns
  corrupted = tf.reshape(corrupted[:count], [-1, columns] + list(images.shape[1:]))
  restored = tf.reshape(restored[:count], [-1, columns] + list(images.shape[1:]))
  rows = tf.stack([corrupted, restored], axis=1)  # groups, 2, columns, H, W, C
  return images_lib.grid(tf.reshape(rows, [-1] + list(images.shape[1:])), columns)


def code_statistics_plot(mean, variance, target_variance, title="", height=110):
  """Two bar charts (RGB uint8): per-dimension mean of the codes against 0, variance against target.

  Bars are grey, the targets red lines; each panel is labelled with its
  range. Drawn with PIL (no plotting library).
  """
  mean, variance = np.asarray(mean, np.float64), np.asarray(variance, np.float64)
  dims = len(mean)
  bar = max(1, min(24, 600 // max(dims, 1)))
  margin, label = 8, 14
  width = max(dims * bar + 2 * margin, 320)
  panel = height + label
  image = Image.new("RGB", (width, 2 * panel + label + margin), "white")
  draw = ImageDraw.Draw(image)
  draw.text((margin, 1), title, fill="black")
  red, grey = (220, 30, 30), (90, 90, 90)

  # Mean: symmetric axis around 0.
  top = label + label
  limit = max(float(np.max(np.abs(mean))) if dims else 0.0, 1e-6) * 1.1
  zero = top + height / 2
  draw.text((margin, top - label), f"mean per dimension (max |mean| {limit / 1.1:.3g}) vs 0",
            fill="black")
  for i, m in enumerate(mean):
    x0 = margin + i * bar
    y = zero - m / limit * (height / 2)
    draw.rectangle([x0, min(y, zero), x0 + max(bar - 2, 0), max(y, zero)], fill=grey)
  draw.line([margin, zero, margin + dims * bar, zero], fill=red, width=1)

  # Variance: from 0, the axis reaching past the target.
  top += panel
  base = top + height
  limit = max(float(np.max(variance)) if dims else 0.0, target_variance, 1e-12) * 1.1
  draw.text((margin, top - label),
            f"variance per dimension (max {np.max(variance) if dims else 0:.3g}) vs "
            f"{target_variance:.3g}", fill="black")
  for i, v in enumerate(variance):
    x0 = margin + i * bar
    draw.rectangle([x0, base - v / limit * height, x0 + max(bar - 2, 0), base], fill=grey)
  target_y = base - target_variance / limit * height
  draw.line([margin, target_y, margin + dims * bar, target_y], fill=red, width=1)
  draw.line([margin, base, margin + dims * bar, base], fill="black", width=1)
  return np.asarray(image, np.uint8)
