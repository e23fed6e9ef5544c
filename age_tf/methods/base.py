"""The contract every method implements: its networks, optimizers, prior, train_step, encode/generate."""

import contextlib
import threading

import keras
import tensorflow as tf

from age_tf import prior as prior_lib
from age_tf.networks import subpixel

PRECISIONS = ("float32", "bfloat16", "float16")


@contextlib.contextmanager
def precision(config):
  """Layers built within it compute in config.mixed_precision with float32 variables.

  float32 leaves Keras's policy as it is; bfloat16 and float16 are Keras's
  mixed_* policies. The global policy is restored on exit, so a process can
  hold models of several precisions.
  """
  name = config.mixed_precision
  if name == "float32":
    yield
    return
  previous = keras.config.dtype_policy()
  keras.config.set_dtype_policy(f"mixed_{name}")
  try:
    yield
  finally:
    keras.config.set_dtype_policy(previous)


def native_bfloat16():
  """Whether this machine computes bfloat16 in hardware.

  A GPU of compute capability 8.0 or later, or a CPU with AVX512_BF16 or AMX
  (Intel Cooper Lake, Sapphire Rapids and later; AMD Zen 4 and later).
  Elsewhere TensorFlow emulates bfloat16, several times slower than float32.
  """
  for gpu in tf.config.list_physical_devices("GPU"):
    capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
    if capability and tuple(capability) >= (8, 0):
      return True
  try:
    with open("/proc/cpuinfo") as f:
      flags = set(next((line for line in f if line.startswith("flags")), "").split())
  except OSError:
    return False
  return bool(flags & {"avx512_bf16", "amx_bf16"})


def float32_outputs(network):
  """`network` with its outputs cast to float32 (itself when they already are).

  Under a mixed policy every loss, divergence and metric is computed from
  float32 codes, images and logits, as the exported signatures are.
  """
  if all(keras.backend.standardize_dtype(t.dtype) == "float32" for t in network.outputs):
    return network
  cast = keras.layers.Activation("linear", dtype="float32", name="to_float32")
  outputs = [cast(t) for t in network.outputs]
  return keras.Model(network.inputs, outputs[0] if len(outputs) == 1 else outputs,
                     name=network.name)


class GeneratorDraws:
  """Draws from a stateful tf.random.Generator (outside the training loop's steps)."""

  def __init__(self, generator):
    self.generator = generator

  def normal(self, shape, dtype=tf.float32, batch_axis=0):
    del batch_axis  # one device, one stream
    return self.generator.normal(shape, dtype=dtype)

  def uniform(self, shape, dtype=tf.float32, batch_axis=0):
    del batch_axis
    return self.generator.uniform(shape, dtype=dtype)


class StepDraws:
  """The random draws of one training step: stateless, keyed on (seed, step, draw index).

  Every draw is made for the GLOBAL batch (the local batch axis times the
  number of replicas) and each replica keeps its own slice, so a step on N
  replicas uses exactly the numbers one device would draw for the whole batch,
  each replica's differ, and a step's draws depend only on the seed and the
  step number (a resumed run draws what an uninterrupted one would). Draws are
  numbered in the order the step's code makes them. Under XLA (--jit_compile)
  the same keys give other numbers of the same distributions: XLA has its own
  generators for the stateless ops.
  """

  def __init__(self, seed, step):
    context = tf.distribute.get_replica_context()
    self.replicas = context.num_replicas_in_sync if context else 1
    self.replica_id = context.replica_id_in_sync_group if context else 0
    self.key = tf.random.experimental.stateless_fold_in(
        tf.constant([seed, 0], tf.int64), tf.cast(step, tf.int64))
    self.index = 0

  def _draw(self, sample, shape, batch_axis):
    key = tf.random.experimental.stateless_fold_in(self.key, self.index)
    self.index += 1
    shape = tf.convert_to_tensor(shape, tf.int32)
    if self.replicas == 1:
      return sample(shape, key)
    rank = shape.shape[0]
    local = shape[batch_axis]
    axis = tf.one_hot(batch_axis, rank, dtype=tf.int32)
    draws = sample(shape + axis * local * (self.replicas - 1), key)
    return tf.slice(draws, axis * local * tf.cast(self.replica_id, tf.int32), shape)

  def normal(self, shape, dtype=tf.float32, batch_axis=0):
    return self._draw(lambda s, k: tf.random.stateless_normal(s, k, dtype=dtype), shape,
                      batch_axis)

  def uniform(self, shape, dtype=tf.float32, batch_axis=0):
    return self._draw(lambda s, k: tf.random.stateless_uniform(s, k, dtype=dtype), shape,
                      batch_axis)


class EpochStepDecay(keras.optimizers.schedules.LearningRateSchedule):
  """The authors' schedule: multiply the rate by `factor` every `decay_epochs` epochs.

  Their `adjust_lr(epoch)` runs at the start of each epoch and decays when
  `epoch % drop_lr == drop_lr - 1`, so the rate in (0-based) epoch e is
  initial * factor ** ((e + 1) // decay_epochs). Counted in this optimizer's
  own updates, so it resumes from a checkpoint with no extra state.
  """

  def __init__(self, initial_learning_rate, updates_per_epoch, decay_epochs, factor):
    self.initial_learning_rate = float(initial_learning_rate)
    self.updates_per_epoch = max(int(updates_per_epoch), 1)
    self.decay_epochs = int(decay_epochs)
    self.factor = float(factor)

  def __call__(self, step):
    if self.decay_epochs <= 0:
      return tf.constant(self.initial_learning_rate, tf.float32)
    epoch = tf.cast(step, tf.int64) // self.updates_per_epoch
    drops = tf.cast((epoch + 1) // self.decay_epochs, tf.float32)
    return self.initial_learning_rate * tf.pow(self.factor, drops)

  def get_config(self):
    return dict(initial_learning_rate=self.initial_learning_rate,
                updates_per_epoch=self.updates_per_epoch,
                decay_epochs=self.decay_epochs, factor=self.factor)


def all_replicas(condition):
  """`condition` (a scalar bool) and-ed over every replica in sync (itself on one device)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return condition
  failures = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                tf.cast(tf.logical_not(condition), tf.float32))
  return failures < 0.5


def apply_if(condition, optimizer, grads, variables):
  """optimizer.apply(grads, variables) only where `condition` holds on every replica.

  MirroredStrategy cannot take a cond in replica context whose branch calls
  merge_call (as optimizer.apply does), so there the cond runs in
  cross-replica context, as keras.optimizers.LossScaleOptimizer does.
  """
  condition = all_replicas(condition)

  def apply():
    optimizer.apply(grads, variables)

  def skip():
    pass

  if tf.__internal__.distribute.strategy_supports_no_merge_call():
    keras.ops.cond(condition, apply, skip)
    return

  def cross_replica(distribution, grads, variables, condition):
    first = distribution.experimental_local_results(condition)[0]

    def apply_on_each_replica():
      distribution.extended.call_for_each_replica(optimizer.apply, args=(grads, variables))

    keras.ops.cond(first, apply_on_each_replica, skip)

  tf.distribute.get_replica_context().merge_call(cross_replica,
                                                 args=(grads, variables, condition))


def adam(config, updates_per_step, name):
  """Adam with the run's betas and epsilon (the authors': 0.5, 0.999, 1e-8) and schedule.

  With --mixed_precision=float16 it is wrapped in Keras's LossScaleOptimizer
  (dynamic loss scaling: float16 gradients underflow without it).
  """
  schedule = EpochStepDecay(config.learning_rate, config.steps_per_epoch * updates_per_step,
                            config.lr_decay_epochs, config.lr_decay_factor)
  optimizer = keras.optimizers.Adam(learning_rate=schedule, beta_1=config.beta1,
                                    beta_2=config.beta2, epsilon=config.adam_epsilon, name=name)
  if config.mixed_precision == "float16":
    return keras.optimizers.LossScaleOptimizer(optimizer, name=f"{name}_loss_scale")
  return optimizer


def inner_optimizer(optimizer):
  """The optimizer a LossScaleOptimizer wraps (what checkpoints hold), else itself."""
  return getattr(optimizer, "inner_optimizer", optimizer)


class BidirectionalModel(keras.Model):
  """An encoder-generator pair trained by a method-specific `train_step`.

  Subclasses build their networks and optimizers in `__init__` (under the
  strategy's scope) and implement `train_step(images)`, where `images` has
  shape (batches_per_step, per_replica_batch, H, W, C): one real batch per
  update. `train_step` returns a dict of scalar metrics named in
  `metric_names`; every loss it differentiates is divided by the number of
  replicas, since the optimizers sum gradients across replicas.
  """

  method_name = ""
  # The settings this method reads beyond the shared ones (age_tf.settings.Setting):
  # each becomes a --flag, refused for the other methods.
  settings = ()
  # Whether the loop calls initialize_from_data(mean image of the first global
  # batch) before the first step.
  data_dependent_init = False
  # The loop's NaN policy (--on_nan=skip sets it before the step is traced):
  # apply_gradients then leaves out an update whose loss or gradients are not finite.
  skip_non_finite_updates = False

  # -- construction and settings --------------------------------------------

  @classmethod
  def create(cls, config, synchronized_bn=False):
    """The method with its networks for a config.Config, built under the current strategy.

    synchronized_bn: BatchNorm statistics over the global batch (multi-replica runs).
    """
    raise NotImplementedError

  @classmethod
  def paper_defaults(cls, spec):
    """Per-dataset defaults of shared and own settings for a data.DatasetSpec: {name: value}.

    Applied to every setting the command line leaves unset.
    """
    return {}

  @classmethod
  def check_settings(cls, values):
    """Checks combinations of the resolved values (a dict of every setting; may fill
    values derived from others); raises UserError naming the problem and the fix."""

  def __init__(self, config, encoder, generator, **kwargs):
    super().__init__(name=config.method, **kwargs)
    if config.prior not in prior_lib.PRIORS:
      raise ValueError(f"Unknown prior {config.prior!r}; valid: {prior_lib.PRIORS}.")
    self.config = config
    self.encoder = encoder
    self.generator = generator
    self.latent_dim = config.latent_dim
    self.prior = config.prior
    # A tf.random.Generator created under the strategy's scope draws
    # different numbers on each replica and is saved in checkpoints.
    self.noise = tf.random.Generator.from_seed(config.seed)
    # Per thread: MirroredStrategy runs each replica's step in its own thread.
    self._draws = threading.local()
    self.num_replicas = tf.distribute.get_strategy().num_replicas_in_sync

  # -- the contract --------------------------------------------------------

  @property
  def batches_per_step(self):
    """How many real batches one train_step consumes."""
    raise NotImplementedError

  @classmethod
  def transposed_conv(cls, config):
    """The algorithm --transposed_conv picks for this method's networks (see subpixel.py)."""
    return subpixel.resolve(config.transposed_conv)

  @classmethod
  def epoch_batches_per_step(cls, config):
    """How many real batches of an epoch one step uses (epoch length in steps follows)."""
    return 1

  @property
  def metric_names(self):
    """The keys of the dict train_step returns (keys under confusion/ are not logged as scalars)."""
    raise NotImplementedError

  @property
  def progress_keys(self):
    """The metrics the console progress shows."""
    return self.metric_names[:4]

  def optimizers(self):
    """{name: (optimizer, the variables it updates)}."""
    raise NotImplementedError

  def train_step(self, images):
    raise NotImplementedError

  # -- shared behaviour ----------------------------------------------------

  def build_optimizers(self):
    """Creates optimizer slots now, so checkpoints restore into them and tracing creates none."""
    for optimizer, variables in self.optimizers().values():
      optimizer.build(variables)

  def initialize_from_data(self, mean_image):
    """Data-dependent initialisation from the mean image (when data_dependent_init)."""

  def write_summaries(self, metrics):
    """Method-specific summaries at a log step, inside the writer's context (default none)."""

  @property
  def random(self):
    """Where this call's random numbers come from: StepDraws inside a loop step, else `noise`."""
    return getattr(self._draws, "in_step", None) or GeneratorDraws(self.noise)

  @contextlib.contextmanager
  def step_draws(self, step):
    """Within it, train_step draws StepDraws(seed, step): the training loop's randomness."""
    self._draws.in_step = StepDraws(self.config.seed, step)
    try:
      yield
    finally:
      self._draws.in_step = None

  def sample_prior(self, batch_size):
    """z ~ N(0, I), projected onto the unit sphere for the sphere prior."""
    return prior_lib.from_normal(self.random.normal([batch_size, self.latent_dim]), self.prior)

  def encode(self, images, training=False):
    return self.encoder(images, training=training)

  def generate(self, codes, training=False):
    return self.generator(codes, training=training)

  def reconstruct(self, images, training=False):
    return self.generate(self.encode(images, training), training)

  # What encoder_training_inputs gives, in words (the served statistics' description).
  encoder_training_inputs_note = "training images"
  # Whether training masks the encoder's inputs (evaluate's inpainting then fills
  # holes with the run's own --mask_fill).
  masks_encoder_inputs = False

  def encoder_training_inputs(self, images, rng):
    """`images` as training feeds them to the encoder (rng: any draws, with .uniform(shape)).

    The served BatchNorm statistics of the encoder are those of these inputs
    (inference_statistics), so they match what it was trained on.
    """
    del rng
    return images

  def call(self, images, training=False):
    return self.reconstruct(images, training)

  def apply_gradients(self, optimizer, tape, loss, variables):
    """Gradients of this replica's share of `loss`, applied (summed over replicas).

    With skip_non_finite_updates (the loop's --on_nan=skip) an update whose
    loss or gradients hold a NaN or Inf on any replica is not applied at all
    (weights, optimizer moments and its update count stay as they were), on
    every replica alike.
    """
    scale = tf.constant(1.0 / self.num_replicas, loss.dtype)
    loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if loss_scaled:  # the same as differentiating optimizer.scale_loss(loss)
      scale *= tf.cast(optimizer.dynamic_scale, loss.dtype)
    grads = tape.gradient(loss, variables, output_gradients=scale)
    if not self.skip_non_finite_updates:
      optimizer.apply(grads, variables)
      return
    # A loss-scaled optimizer skips (and lowers its scale on) overflowing
    # gradients itself; only a non-finite loss is a bad step there.
    checked = [loss] + ([] if loss_scaled else [g for g in grads if g is not None])
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(t)) for t in checked])
    apply_if(finite, optimizer, grads, variables)

  def state_variables(self):
    """The networks' non-trainable state a forward pass updates (BatchNorm statistics, the
    spectral norm's power-iteration vectors): what --on_nan=skip restores after a bad step."""
    return [v for item in self.checkpoint_items().values() if isinstance(item, keras.Layer)
            for v in item.non_trainable_variables]

  def checkpoint_items(self):
    """What a checkpoint holds for this method: networks, optimizers, random state."""
    items = dict(encoder=self.encoder, generator=self.generator, noise=self.noise)
    # The inner optimizer: checkpoints of every precision have the same layout.
    items.update({name: inner_optimizer(opt) for name, (opt, _) in self.optimizers().items()})
    return items
