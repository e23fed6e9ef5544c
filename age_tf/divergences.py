"""Divergence estimators between a batch of latent codes and N(0, I), and reconstruction losses.

All estimators see the GLOBAL batch: inside a `tf.distribute` replica context
with more than one replica, the batch moments are all-reduced (sums, counts
and sums of squared deviations) and the nearest-neighbour estimator gathers
every replica's codes, so a replicated step computes what one device would on
the concatenated batch. Each replica's loss must then be divided by the
number of replicas, like any other per-replica mean (see methods/base.py).
"""

import math

import tensorflow as tf

KL_ESTIMATORS = ("moments", "knn")
REDUCTIONS = ("mean", "sum")
RECONSTRUCTION_LOSSES = ("l1", "l2", "cos")


def _at_least_float32(x):
  """Half-precision codes (mixed precision) are upcast; float32/float64 kept."""
  x = tf.convert_to_tensor(x)
  return tf.cast(x, tf.float32) if x.dtype in (tf.float16, tf.bfloat16) else x


def _replica_context():
  """The replica context when there is more than one replica, else None."""
  ctx = tf.distribute.get_replica_context()
  if ctx is not None and ctx.num_replicas_in_sync > 1:
    return ctx
  return None


def global_moments(codes):
  """Component-wise mean and biased variance of (batch, M) codes over the global batch.

  Two passes (mean, then mean squared deviation) for accuracy; under more
  than one replica each pass is one all-reduce of sums and counts.
  """
  codes = _at_least_float32(codes)
  count = tf.cast(tf.shape(codes)[0], codes.dtype)
  total = tf.reduce_sum(codes, axis=0)
  ctx = _replica_context()
  if ctx is not None:
    total, count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [total, count])
  mean = total / count
  squared_deviation = tf.reduce_sum(tf.square(codes - mean), axis=0)
  if ctx is not None:
    squared_deviation = ctx.all_reduce(tf.distribute.ReduceOp.SUM, squared_deviation)
  return mean, squared_deviation / count


def _reduce_dims(per_dim, reduction):
  if reduction == "mean":
    return tf.reduce_mean(per_dim)
  if reduction == "sum":
    return tf.reduce_sum(per_dim)
  raise ValueError(f"Unknown reduction {reduction!r}; valid: {REDUCTIONS}.")


def moments_kl(codes, reduction="mean"):
  """The AGE parametric estimator of KL(Q || N(0, I)) (paper eq. 8, as coded).

  Per latent dimension j with batch mean m_j and biased batch variance v_j:
  (v_j^2 + m_j^2) / 2 - log(v_j) - 1/2, averaged over the M dimensions
  (the authors' code, default) or summed (eq. 8 as printed). Note that the
  variance stands where a Gaussian KL has the standard deviation, in both.
  """
  return kl_from_moments(*global_moments(codes), reduction=reduction)


def kl_from_moments(mean, var, reduction="mean"):
  """moments_kl from already computed batch moments (see moments_kl)."""
  per_dim = (tf.square(var) + tf.square(mean)) / 2.0 - tf.math.log(var) - 0.5
  return _reduce_dims(per_dim, reduction)


def knn_kl(codes, reduction="mean", eps=1e-12):
  """Kozachenko-Leonenko nearest-neighbour estimator of KL(Q || N(0, I)).

  KL = CE - H with the cross-entropy CE = mean_i |q_i|^2 / 2 + M/2 log(2 pi)
  and the entropy estimate H = M/N sum_i log(rho_i) + log(V_M) + psi(N) -
  psi(1), rho_i the distance from q_i to its nearest other sample and V_M the
  volume of the unit M-ball (Kozachenko & Leonenko, 1987; AGE paper 3.1).
  The "mean" reduction divides by M, matching the parametric estimator's
  default. Cost is O(N^2 M) in the global batch size N.
  """
  codes = _at_least_float32(codes)
  dim = float(codes.shape[-1])
  ctx = _replica_context()
  if ctx is not None:
    codes = ctx.all_gather(codes, axis=0)
  n = tf.cast(tf.shape(codes)[0], codes.dtype)
  squared_norms = tf.reduce_sum(tf.square(codes), axis=1)
  squared_dist = (squared_norms[:, None] + squared_norms[None, :]
                  - 2.0 * tf.matmul(codes, codes, transpose_b=True))
  squared_dist += tf.linalg.diag(tf.fill(tf.shape(squared_norms),
                                         tf.constant(float("inf"), codes.dtype)))
  nearest = tf.maximum(tf.reduce_min(squared_dist, axis=1), eps)
  log_unit_ball = dim / 2.0 * math.log(math.pi) - math.lgamma(dim / 2.0 + 1.0)
  # psi(N) - psi(1) = H_{N-1}, the harmonic number.
  harmonic = tf.reduce_sum(1.0 / tf.range(tf.constant(1.0, codes.dtype), n))
  entropy = (dim * tf.reduce_mean(0.5 * tf.math.log(nearest))
             + log_unit_ball + harmonic)
  cross_entropy = tf.reduce_mean(squared_norms) / 2.0 + dim / 2.0 * math.log(2.0 * math.pi)
  kl = cross_entropy - entropy
  return kl / dim if reduction == "mean" else kl


def kl_and_moments(codes, estimator="moments", reduction="mean"):
  """KL(codes || N(0, I)) by the --kl_estimator, with the global batch moments.

  The moments (component-wise mean and variance) are what the AGE paper
  says to monitor; the moments estimator computes them only once.
  """
  if estimator == "moments":
    mean, var = global_moments(codes)
    return kl_from_moments(mean, var, reduction), mean, var
  if estimator == "knn":
    mean, var = global_moments(tf.stop_gradient(codes))
    return knn_kl(codes, reduction), mean, var
  raise ValueError(f"Unknown KL estimator {estimator!r}; valid: {KL_ESTIMATORS}.")


def ideal_sphere_kl(latent_dim, reduction="mean"):
  """The moments estimator's value for codes uniform on the unit sphere.

  Per dimension the mean is 0 and the variance 1/M, so the estimator reads
  log M - 1/2 + 1/(2 M^2) (about 4.352 for M = 128), its floor on the sphere.
  """
  per_dim = 0.5 / latent_dim ** 2 + math.log(latent_dim) - 0.5
  return per_dim * (latent_dim if reduction == "sum" else 1)


def reconstruction_loss(target, output, kind):
  """Mean reconstruction error between two batches, as the authors' `match`.

  l1: mean |a - b|; l2: mean (a - b)^2; cos: 2 - mean(a/|a| * b/|b|) with
  per-sample normalisation over the last axis and the mean over batch AND
  dimensions (so the per-sample cosine is weighted by 1/M).
  """
  target = _at_least_float32(target)
  output = tf.cast(_at_least_float32(output), target.dtype)
  if kind == "l1":
    return tf.reduce_mean(tf.abs(target - output))
  if kind == "l2":
    return tf.reduce_mean(tf.square(target - output))
  if kind == "cos":
    return 2.0 - tf.reduce_mean(tf.math.l2_normalize(target, axis=-1)
                                * tf.math.l2_normalize(output, axis=-1))
  raise ValueError(f"Unknown reconstruction loss {kind!r}; valid: {RECONSTRUCTION_LOSSES}.")
