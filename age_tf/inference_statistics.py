"""BatchNorm statistics for inference: what evaluate, the export and training's figures serve.

Every inference-mode call (evaluate, the SavedModel, TF Serving, the
training figures) normalises with BatchNorm's moving_mean and
moving_variance. Training leaves there an exponential average over every
training-mode call of the network: the encoder's over real and generated
batches alike, the generator's mostly over prior codes. In training mode,
by contrast, each batch is normalised by its own statistics, so the
generator's reconstructions g(e(x)) were trained under the statistics of
encodings and its samples g(z) under those of prior draws.

--bn_statistics=recompute (the default) serves each signature the
population statistics of what it is fed, from a statistics-only pass
(`StatisticsPass`) over --bn_statistics_images calibration inputs:

* encoder (encode, reconstruct): real training images as training feeds
  them to the encoder (the method's `encoder_training_inputs`: an encoder
  trained only on masked images is served the statistics of masked images);
* generator (generate, sample): prior draws;
* reconstruct's generator: the encodings of the same encoder inputs. It is
  the generator's graph with the same layers (weights shared, nothing
  copied) except each BatchNorm, replaced by a `SharedBatchNormalization`
  holding its own statistics and the original's gamma and beta.

--bn_statistics=recompute_shared gives the one generator one set of
statistics instead, from a mix: a --bn_statistics_prior_fraction share of
prior draws, the rest encodings. --bn_statistics=moving serves the moving
averages as trained (the authors' code: netE.eval(), netG.eval()).

The pass runs in inference mode, one BatchNorm layer at a time in
topological order: layer k's statistics become the mean and the (biased,
as Keras's moving variance) variance, per channel, of its inputs over all
calibration inputs (merged over batches in float64), computed with the
layers before it already recomputed. So afterwards each layer's statistics
are exactly those of its inputs in inference mode (tests check this fixed
point against numpy). No training-mode call is made: weights, optimizer
and random state are never touched, and the pass computes the same on one
device and under any strategy (it runs in cross-replica context, on fixed
inputs, so every replica gets the same values).

Checkpoints always hold training's moving averages: the exported and
evaluated models are recomputed in memory after loading (`prepare`), and
training's figures recompute inside `served`, which restores the moving
averages afterwards, so a resumed run follows the same trajectory.
"""

import contextlib
import dataclasses
import functools

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from age_tf import data
from age_tf import prior as prior_lib
from age_tf.errors import UserError

MODES = ("recompute", "recompute_shared", "moving")
DEFAULT_MODE = "recompute"
DEFAULT_IMAGES = 2048
DEFAULT_PRIOR_FRACTION = 0.5
PASS_BATCH_SIZE = 128
# The most memory the pass keeps a layer's inputs in (over all calibration inputs) to
# compute the next layer's from them.
MAX_KEPT_BYTES = 512 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class Settings:
  """How the served BatchNorm statistics are made."""
  mode: str = DEFAULT_MODE
  images: int = DEFAULT_IMAGES
  prior_fraction: float = DEFAULT_PRIOR_FRACTION
  seed: int = 0

  def check(self):
    if self.mode not in MODES:
      raise UserError(f"--bn_statistics={self.mode!r}: valid values are {', '.join(MODES)}.")
    if self.images < 1:
      raise UserError(f"--bn_statistics_images={self.images} must be positive.")
    if not 0.0 <= self.prior_fraction <= 1.0:
      raise UserError(f"--bn_statistics_prior_fraction={self.prior_fraction} must be in "
                      "[0, 1].")
    return self


def settings_of(config, mode=None, images=None, prior_fraction=None):
  """The run's Settings (config's fields, defaults for a flags.json without them), overridden."""
  def pick(value, name, default):
    return value if value is not None else getattr(config, name, default)
  return Settings(mode=pick(mode, "bn_statistics", DEFAULT_MODE),
                  images=int(pick(images, "bn_statistics_images", DEFAULT_IMAGES)),
                  prior_fraction=float(pick(prior_fraction, "bn_statistics_prior_fraction",
                                            DEFAULT_PRIOR_FRACTION)),
                  seed=int(config.seed)).check()


def settings_from_flags(config, flag_values):
  """The run's Settings, with --bn_statistics* given on this command line taking precedence."""
  given = {}
  for name, key in (("bn_statistics", "mode"), ("bn_statistics_images", "images"),
                    ("bn_statistics_prior_fraction", "prior_fraction")):
    if name in flag_values and flag_values[name].present:
      given[key] = flag_values[name].value
  return settings_of(config, **given)


# ---------------------------------------------------------------- the layers


@keras.saving.register_keras_serializable(package="age_tf")
class SharedBatchNormalization(keras.layers.Layer):
  """Inference-mode BatchNormalization with its own statistics and another layer's gamma and beta.

  Computes what keras.layers.BatchNormalization computes in inference mode
  (float32 statistics, the source's axis and epsilon) with moving_mean and
  moving_variance of its own. The source is not tracked: its gamma and
  beta stay its own variables (an export captures them once).
  """

  def __init__(self, source, **kwargs):
    super().__init__(name=kwargs.pop("name", f"{source.name}_shared"),
                     dtype=source.dtype_policy, **kwargs)
    object.__setattr__(self, "_source", source)  # bypasses tracking

  def build(self, input_shape):
    shape = tuple(self._source.moving_mean.shape)
    self.moving_mean = self.add_weight(shape=shape, initializer="zeros", trainable=False,
                                       name="moving_mean", autocast=False)
    self.moving_variance = self.add_weight(shape=shape, initializer="ones", trainable=False,
                                           name="moving_variance", autocast=False)

  def call(self, inputs, training=None, mask=None):
    del training, mask  # inference mode only
    source = self._source
    dtype = keras.backend.result_type(inputs.dtype, "float32")
    outputs = ops.batch_normalization(
        ops.cast(inputs, dtype), ops.cast(self.moving_mean, dtype),
        ops.cast(self.moving_variance, dtype), axis=source.axis,
        offset=ops.cast(source.beta, dtype) if source.center else None,
        scale=ops.cast(source.gamma, dtype) if source.scale else None, epsilon=source.epsilon)
    return ops.cast(outputs, self.compute_dtype)

  def compute_output_shape(self, input_shape):
    return input_shape


def with_own_statistics(network):
  """`network`'s graph on the same layers, each BatchNorm replaced by a SharedBatchNormalization."""
  def clone(layer):
    if isinstance(layer, keras.layers.BatchNormalization):
      return SharedBatchNormalization(layer)
    return layer  # the same layer: its weights are shared
  return keras.models.clone_model(network, clone_function=clone)


def batch_norm_layers(network):
  """The BatchNorm layers of a functional network (Shared ones too), in topological order."""
  layers = []
  for layer in network.layers:
    if isinstance(layer, (keras.layers.BatchNormalization, SharedBatchNormalization)):
      layers.append(layer)
    elif isinstance(layer, keras.Model) and batch_norm_layers(layer):
      raise ValueError(f"{network.name}: BatchNorm inside the nested model {layer.name} is not "
                       "supported by the statistics pass.")
  return layers


def statistics_variables(model):
  """The moving means and variances of the model's encoder and generator."""
  return [v for network in (model.encoder, model.generator)
          for layer in batch_norm_layers(network)
          for v in (layer.moving_mean, layer.moving_variance)]


def snapshot(model):
  """Copies of the encoder's and generator's BatchNorm statistics (for `assign`)."""
  return [np.array(v.numpy()) for v in statistics_variables(model)]


def assign(model, values):
  """Sets the encoder's and generator's BatchNorm statistics to a `snapshot`'s values."""
  for variable, value in zip(statistics_variables(model), values, strict=True):
    variable.assign(value)


@contextlib.contextmanager
def preserved(model):
  """Within it the encoder's and generator's BatchNorm statistics may change; restored on exit."""
  saved = snapshot(model)
  try:
    yield
  finally:
    assign(model, saved)


# ---------------------------------------------------------------- the pass


class NetworkPass:
  """The statistics pass of one network, one BatchNorm layer at a time.

  Layer k's inputs are computed from layer k-1's (kept from the previous
  layer's turn) by the segment of the graph between them, so the pass costs
  about one inference pass of the network over the calibration inputs. A
  segment starts from the network's inputs instead when the graph between
  the two layers is not a chain through layer k-1's input (a skip connection
  around it), or when keeping layer k-1's inputs for every calibration input
  would take more than MAX_KEPT_BYTES.

  The first `recompute` runs the segments eagerly; later ones run them as
  tf.functions, traced at the second. Evaluate and the export run the pass
  once, where tracing would cost more than it saves; training's image steps
  run it again and again.
  """

  def __init__(self, network):
    self.network = network
    self.layers = batch_norm_layers(network)
    for layer in self.layers:
      source = getattr(layer, "_source", layer)
      if source.axis not in (-1, len(layer.input.shape) - 1):
        raise ValueError(f"{network.name}/{layer.name}: the statistics pass takes BatchNorm "
                         f"over the last axis, not axis {source.axis}.")
    # (start, k, traced) -> the moments function of the segment; start -1: the inputs
    self._moments = {}
    self._runs = 0
    # Per layer, the cut its inputs were last computed from: the index of the layer whose
    # inputs were kept, or -1 for the network's inputs.
    self.starts = []

  def _moments_fn(self, start, k):
    """The moments function of layer k's inputs computed from cut `start`, or None when the
    graph between them is not a segment (then only the network's inputs will do)."""
    key = (start, k, self._runs > 0)
    if key not in self._moments:
      begin = self.network.inputs[0] if start < 0 else self.layers[start].input
      try:
        probe = keras.Model(begin, self.layers[k].input,
                            name=f"{self.network.name}_{self.layers[k].name}_input_{start + 1}")
      except ValueError:  # not connected through `begin` alone
        self._moments[key] = None
      else:
        self._moments[key] = _moments_fn(probe, begin.shape[1:], traced=self._runs > 0)
    return self._moments[key]

  def recompute(self, batches):
    """Sets each layer's moving statistics to its inputs' population mean and variance."""
    count = sum(int(b.shape[0]) for b in batches)
    start, kept = -1, batches  # the cut whose values over the calibration inputs are kept
    self.starts = []
    for k, layer in enumerate(self.layers):
      moments = self._moments_fn(start, k)
      if moments is None:
        start, kept = -1, batches
        moments = self._moments_fn(start, k)
      self.starts.append(start)
      keep = (k + 1 < len(self.layers) and
              count * int(np.prod(layer.input.shape[1:])) * 4 <= MAX_KEPT_BYTES)
      total, mean, m2, outputs = 0.0, 0.0, 0.0, []
      for batch in kept:
        n, batch_mean, batch_m2, h = moments(batch)
        if keep:
          outputs.append(h)
        n, batch_mean, batch_m2 = (np.asarray(t, np.float64) for t in (n, batch_mean, batch_m2))
        # Chan et al.'s pairwise update of (count, mean, sum of squared deviations).
        delta = batch_mean - mean
        merged = total + n
        mean = mean + delta * (n / merged)
        m2 = m2 + batch_m2 + delta ** 2 * (total * n / merged)
        total = merged
      layer.moving_mean.assign(np.asarray(mean, np.float32))
      layer.moving_variance.assign(np.asarray(m2 / total, np.float32))
      if keep:
        start, kept = k, outputs
    self._runs += 1


def _moments_fn(probe, input_shape, traced):
  """(count, mean, sum of squared deviations) per channel of the probe's output on a batch,
  and the output itself in float32 (the next segment's input); a tf.function if `traced`."""
  def moments(x):
    h = probe(x, training=False)
    # float64 sums: in float32 a batch of 128 at 16x16 (32,768 values a channel) put
    # the mean 2e-4 of the channel's std off.
    h64 = tf.cast(h, tf.float64)
    axes = list(range(len(h.shape) - 1))
    mean = tf.reduce_mean(h64, axes)
    m2 = tf.reduce_sum(tf.square(h64 - mean), axes)
    count = tf.cast(tf.reduce_prod(tf.shape(h)[:-1]), tf.float64)
    return count, mean, m2, tf.cast(h, tf.float32)
  if traced:
    # Through a partial, which has no __code__: TensorFlow then counts this
    # function's traces apart from the other segments' (one trace each) instead
    # of warning of retracing as if the one `moments` were traced again and again.
    return tf.function(functools.partial(moments), autograph=False,
                       input_signature=[tf.TensorSpec([None, *input_shape], tf.float32)])
  return moments


def unwrap(model):
  """The model itself of a Served (or of a model)."""
  return model.model if isinstance(model, Served) else model


class Served:
  """A model as it serves: reconstruct through the generator with the statistics of encodings.

  encode, generate and every other attribute are the model's; reconstruct
  runs `reconstruction_generator` (with_own_statistics(model.generator))
  when there is one.
  """

  def __init__(self, model, reconstruction_generator=None):
    self.model = model
    self.reconstruction_generator = reconstruction_generator

  def __getattr__(self, name):
    if name in ("model", "reconstruction_generator"):  # not set yet
      raise AttributeError(name)
    return getattr(self.model, name)

  def reconstruct(self, images, training=False):
    if training or self.reconstruction_generator is None:
      return self.model.reconstruct(images, training)
    return self.reconstruction_generator(self.model.encode(images, training=False),
                                         training=False)


class StatisticsPass:
  """Recomputes a model's served BatchNorm statistics from a Calibration.

  Build once per model (it builds one probe per BatchNorm layer and, for
  mode "recompute", reconstruct's generator) and `run` as often as needed;
  `served` is the model as it then serves.
  """

  def __init__(self, model, settings, batch_size=PASS_BATCH_SIZE):
    if settings.mode not in ("recompute", "recompute_shared"):
      raise ValueError(f"No statistics pass for --bn_statistics={settings.mode}.")
    self.model = model
    self.settings = settings
    self.batch_size = batch_size
    self.encoder = NetworkPass(model.encoder)
    self.generator = NetworkPass(model.generator)
    reconstruction_generator = None
    if settings.mode == "recompute":
      reconstruction_generator = with_own_statistics(model.generator)
      self.reconstruction = NetworkPass(reconstruction_generator)
    self.served = Served(model, reconstruction_generator)
    self._encode = tf.function(
        lambda x: model.encode(x, training=False),
        input_signature=[tf.TensorSpec([None, *model.encoder.inputs[0].shape[1:]], tf.float32)],
        autograph=False)

  def _batches(self, array):
    return [tf.constant(array[i:i + self.batch_size])
            for i in range(0, len(array), self.batch_size)]

  def _encodings(self, inputs):
    return np.concatenate([np.asarray(self._encode(batch)) for batch in self._batches(inputs)])

  def run(self, calibration):
    """Recomputes every served statistic; returns what it used (for metadata and reports)."""
    images = encoder_inputs(self.model, calibration, self.settings.seed)
    count = len(images)
    self.encoder.recompute(self._batches(images))
    info = {"mode": self.settings.mode, "encoder_images": count, "seed": self.settings.seed,
            "encoder_inputs": self.model.encoder_training_inputs_note}
    if self.settings.mode == "recompute":
      self.generator.recompute(self._batches(calibration.prior))
      self.reconstruction.recompute(self._batches(self._encodings(images)))
      info.update(generator_prior_draws=count, reconstruct_generator_encodings=count)
      return info
    num_prior = int(round(count * self.settings.prior_fraction))
    parts = [self._encodings(images[:count - num_prior])] if num_prior < count else []
    parts += [calibration.prior[:num_prior]] if num_prior else []
    self.generator.recompute(self._batches(np.concatenate(parts).astype(np.float32)))
    info.update(generator_prior_draws=num_prior, generator_encodings=count - num_prior,
                prior_fraction=self.settings.prior_fraction)
    return info


# ---------------------------------------------------------------- calibration inputs


@dataclasses.dataclass(frozen=True)
class Calibration:
  """The statistics pass's inputs: uint8 training images and prior draws, fixed by the seed."""
  images: np.ndarray  # (N, H, W, C) uint8
  prior: np.ndarray  # (N, M) float32


def sample_images(spec, split, count, seed, data_dir=None, download=True):
  """`count` uint8 images of a split (all when fewer), the same every call with the same seed.

  A seeded uniform sample in random order for digits and folders (whose
  files are in path order), the first `count` for tfds datasets (shuffled
  when tfds prepared them). Independent of TensorFlow's global seed, so
  training, evaluate and export draw the same images for the same run.
  """
  rng = np.random.default_rng([seed, 2026, 0 if split == "train" else 1])
  size = spec.num_train if split == "train" else spec.num_test
  count = min(count, size)
  if spec.source == "folder":
    files = spec.train_files if split == "train" else spec.test_files
    chosen = tuple(files[i] for i in rng.choice(len(files), count, replace=False))
    spec = dataclasses.replace(spec, **({"train_files": chosen, "num_train": count}
                                        if split == "train" else
                                        {"test_files": chosen, "num_test": count}))
    ds = data.source(spec, split, data_dir, download)
  elif spec.source == "digits":
    ds = data.source(spec, split, data_dir, download)
  else:
    ds = data.source(spec, split, data_dir, download).take(count)
  images = np.concatenate([b["image"].numpy() for b in ds.batch(1000)])
  if spec.source == "digits":
    images = images[rng.permutation(len(images))[:count]]
  return images.astype(np.uint8)


def calibration_data(spec, count, latent_dim, prior, seed, data_dir=None, download=True):
  """`count` training images (sample_images) and as many prior draws, fixed by the seed."""
  images = sample_images(spec, "train", count, seed, data_dir, download)
  rng = np.random.default_rng([seed, 2026, 2])
  prior_draws = prior_lib.numpy_draws(rng, len(images), latent_dim, prior)
  return Calibration(images=images, prior=prior_draws)


class _Uniform:
  """uniform(shape) draws from a seeded numpy generator: no TensorFlow state, so the same
  under any strategy and in any context."""

  def __init__(self, seed):
    self._rng = np.random.default_rng([seed, 2026, 3])

  def uniform(self, shape):
    return tf.constant(self._rng.random(shape), tf.float32)


def encoder_inputs(model, calibration, seed):
  """The calibration images, float in [-1, 1], as training feeds them to model's encoder
  (model.encoder_training_inputs, which may mask them), fixed by the seed."""
  rng = _Uniform(seed)
  images = calibration.images
  return np.concatenate([
      np.asarray(model.encoder_training_inputs(data.to_float(tf.constant(
          images[i:i + PASS_BATCH_SIZE])), rng))
      for i in range(0, len(images), PASS_BATCH_SIZE)]).astype(np.float32)


def calibration_for(config, settings, spec=None):
  """The Calibration of a run (config) under `settings`, or None for mode "moving"."""
  if settings.mode == "moving":
    return None
  from age_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  spec = spec or config_lib.dataset_spec(config)
  return calibration_data(spec, settings.images, config.latent_dim, config.prior,
                          settings.seed, config.data_dir or None, config.download)


# ---------------------------------------------------------------- entry points


def prepare(model, config, settings=None, calibration=None, spec=None):
  """Gives a loaded model (not one that trains on) the statistics it serves.

  Returns (the model as it serves: a Served, or the model itself for mode
  "moving"; a description of the statistics for metadata and reports).
  """
  settings = settings or settings_of(config)
  if settings.mode == "moving":
    return model, {"mode": "moving"}
  calibration = calibration or calibration_for(config, settings, spec)
  statistics_pass = StatisticsPass(model, settings)
  return statistics_pass.served, statistics_pass.run(calibration)


@contextlib.contextmanager
def served(model, statistics_pass=None, calibration=None):
  """Within it the model has the statistics it would serve; training's are restored on exit.

  Yields the model as it serves (statistics_pass.served, or the model when
  there is no pass: mode "moving").
  """
  with preserved(model):
    if statistics_pass is None:
      yield model
    else:
      statistics_pass.run(calibration)
      yield statistics_pass.served


def load_served_model(model_dir, checkpoint=None, settings=None):
  """checkpointing.load_model, then `prepare`: (config, served model, step, statistics info)."""
  from age_tf import checkpointing  # pylint: disable=g-import-not-at-top
  config, model, step = checkpointing.load_model(model_dir, checkpoint)
  served_model, info = prepare(model, config, settings)
  return config, served_model, step, info
