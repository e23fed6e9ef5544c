"""The latent prior: N(0, I) draws, projected onto the unit sphere for --prior=sphere."""

import numpy as np
import tensorflow as tf

PRIORS = ("sphere", "gaussian")


def from_normal(normal, prior):
  """N(0, I) draws (a tensor, last axis the code) -> the prior's: onto the unit sphere for
  "sphere" (AGE's latent space), unchanged for "gaussian"."""
  if prior not in PRIORS:
    raise ValueError(f"Unknown prior {prior!r}; valid: {PRIORS}.")
  return tf.math.l2_normalize(normal, axis=-1) if prior == "sphere" else normal


def numpy_draws(rng, count, latent_dim, prior):
  """`count` codes of the prior from a numpy Generator, float32 (count, latent_dim)."""
  if prior not in PRIORS:
    raise ValueError(f"Unknown prior {prior!r}; valid: {PRIORS}.")
  z = rng.standard_normal((count, latent_dim))
  if prior == "sphere":
    z /= np.linalg.norm(z, axis=1, keepdims=True)
  return z.astype(np.float32)
