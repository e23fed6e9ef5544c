"""The training loop: strategy, input, compiled steps, checkpoints, TensorBoard summaries, progress."""

import contextlib
import os
import signal
import sys
import threading
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import data
from age_tf import distribute
from age_tf import images as images_lib
from age_tf import inference_statistics
from age_tf import prior as prior_lib
from age_tf import run_lock
from age_tf.errors import TrainingStopped
from age_tf.errors import UserError
from age_tf.methods import METHODS
from age_tf.methods import base

NUM_SAMPLES = 64  # 8 x 8 sample grid
NUM_RECONSTRUCTIONS = 32  # 32 real | reconstruction pairs, 8 x 8 grid
# Test images (a seeded sample) whose reconstruction error is logged at image steps.
NUM_TEST_RECONSTRUCTIONS = 500
SAMPLES_PNG = "samples.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
# Metrics under this prefix are method-rendered (e.g. a confusion matrix), not scalars.
UNLOGGED_PREFIX = "confusion/"


def train(config, strategy=None, lock=True):
  """Trains (or resumes) the run `config` describes; returns the last logged metrics.

  Nothing is written to model_dir until the model, its checkpoint and the
  input pipeline exist, so a bad dataset or directory fails cleanly. Under a
  multi-worker strategy only the chief writes flags.json, summaries, PNGs and
  model_dir's checkpoints; the other workers save theirs (checkpoint saving
  is collective) to a temporary directory that is removed at the end, and
  every worker resumes from the chief's latest checkpoint. The chief holds
  model_dir's lock (run_lock.py) throughout; a second trainer on the same
  directory fails before reading a checkpoint (lock=False: the caller holds
  it). A failed start removes the lock, and model_dir if it created it.
  """
  spec = config_lib.dataset_spec(config)
  if spec.source == "folder":
    spec = data.check_folder_images(spec, config.on_bad_image)
  strategy = strategy or distribute.make_strategy(config.strategy, config.num_cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise UserError(f"--batch_size={config.batch_size} does not split evenly over {replicas} "
                    f"replicas; use a multiple of {replicas}.")
  _check_jit_compile(config.jit_compile, replicas)  # before anything is written
  if config.mixed_precision == "bfloat16" and not base.native_bfloat16():
    logging.warning("--mixed_precision=bfloat16 on a machine without native bfloat16 (no GPU "
                    "of compute capability 8.0+, no AVX512_BF16 or AMX CPU): TensorFlow "
                    "emulates it, several times slower than float32. Use float32 here.")
  chief = distribute.is_chief(strategy)
  checkpointing.check_compatible(config)
  # One trainer per model_dir (the chief for a cluster), from before the first
  # checkpoint is read to the end; see run_lock.py.
  with run_lock.RunLock(config.model_dir) if chief and lock else contextlib.nullcontext():
    return _train(config, spec, strategy, chief)


def _train(config, spec, strategy, chief):
  """train()'s work, once the run holds its model_dir: restore or build, input, outputs,
  first-step initialisation, the compiled steps and the chunk loop (_run)."""
  if config.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.utils.set_random_seed(config.seed)  # initial weights
  model, step, manager = _restore_or_build(config, strategy, chief)
  start = int(step.numpy())
  _log_start(config, spec, strategy, start)
  if start >= config.train_steps:
    logging.info("Already trained to step %d (--train_steps=%d); nothing to do.",
                 start, config.train_steps)
    return {}
  iterator = _input(config, spec, strategy, model, start)
  figures = _Figures(config, spec, model) if chief else None
  writer = _open_outputs(config, manager, chief)
  if start == 0:
    _initialize(config, strategy, model, iterator, figures, writer)
  # A signal is handled (the current step finishes, a checkpoint is written)
  # on one machine; under multi_worker a worker's signal cannot stop the
  # others' collectives, so there the default (exit, resume from the last
  # checkpoint) stays.
  interrupts = _Interrupts() if config.strategy != "multi_worker" else None
  try:
    with interrupts or contextlib.nullcontext():
      run_steps = compile_train_steps(
          strategy, model, step, stop=interrupts.requested if interrupts else None,
          on_nan=config.on_nan, nan_at_step=config.debug_nan_at_step,
          jit_compile=config.jit_compile)
      last = _run(config, model, step, manager, iterator, figures, writer, run_steps,
                  interrupts)
  finally:
    if not chief and tf.io.gfile.exists(manager.directory):  # a worker's own checkpoints
      tf.io.gfile.rmtree(manager.directory)
  logging.info("Trained to step %d; checkpoint %s; weights fingerprint %.10e",
               int(step.numpy()), manager.latest_checkpoint if chief else "(the chief's)",
               weights_fingerprint(model))
  return last


def _log_start(config, spec, strategy, start):
  logging.info("%s on %s: %dx%dx%d images, M=%d, %d steps (%d per epoch), batch %d on %d "
               "replica(s); model_dir %s%s", config.method, spec.name, spec.image_size,
               spec.image_size, spec.channels, config.latent_dim, config.train_steps,
               config.steps_per_epoch, config.batch_size, strategy.num_replicas_in_sync,
               config.model_dir, f"; resuming at step {start}" if start else "")


def _open_outputs(config, manager, chief):
  """The chief writes flags.json, clears partial checkpoints and opens the event writer."""
  if not chief:
    return tf.summary.create_noop_writer()
  with writing("flags.json", config.model_dir):
    checkpointing.save_flags(config)
    _remove_partial_checkpoints(manager.directory)
    return tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))


def _initialize(config, strategy, model, iterator, figures, writer):
  """Before step 1 of a new run: the data-dependent initialisation and the step-0 images."""
  if model.data_dependent_init:
    model.initialize_from_data(_mean_image(strategy, iterator))
  if figures:
    with writing("images", config.model_dir):
      figures.write(writer, 0)


def weights_fingerprint(model):
  """The sum of squares of every model variable (float64): equal on workers in sync."""
  return float(sum(np.sum(np.square(v.numpy().astype(np.float64))) for v in model.variables))


def _restore_or_build(config, strategy, chief=True):
  """The model, step counter and checkpoint manager, restored from the latest checkpoint."""
  replicas = strategy.num_replicas_in_sync
  directory = checkpointing.checkpoint_dir(config.model_dir)
  with strategy.scope():
    model = METHODS[config.method].create(config, synchronized_bn=replicas > 1)
    model.build_optimizers()
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    checkpoint = checkpointing.make_checkpoint(model, step)
    # The newest checkpoint that restores; damaged newer ones are set aside (by the chief).
    checkpointing.restore_newest(checkpoint, directory, set_aside=chief)
    if not chief:
      task_type, task_id = distribute.worker_id(strategy)
      directory = os.path.join(config.model_dir, f".{task_type}-{task_id}-tmp")
    manager = tf.train.CheckpointManager(
        checkpoint, directory, max_to_keep=config.keep_checkpoints if chief else 1,
        step_counter=step)
  return model, step, manager


def _input(config, spec, strategy, model, start):
  """The distributed training iterator; each input pipeline reads its own shard.

  A resumed run must not replay the first batches. By default the data order
  is reseeded with the start step (no cost). With --deterministic the order
  is the uninterrupted run's: the same seed, and the elements the first
  `start` steps (and the data-dependent initialisation) used are skipped.
  """
  seed, consumed = config.seed + start, 0
  if config.deterministic:
    seed = config.seed
    if start:  # the first run's mean image took one element too
      consumed = start + (1 if model.data_dependent_init else 0)

  def dataset_fn(input_context):
    ds = data.train_dataset(
        spec, input_context.get_per_replica_batch_size(config.batch_size),
        model.batches_per_step, seed=seed, data_dir=config.data_dir or None,
        download=config.download, cache=config.cache, shuffle_buffer=config.shuffle_buffer,
        input_context=input_context, shuffle_files=not config.deterministic)
    # Each step takes one element per replica this pipeline feeds.
    per_step = input_context.num_replicas_in_sync // input_context.num_input_pipelines
    return ds.skip(consumed * per_step) if consumed else ds

  return iter(strategy.distribute_datasets_from_function(dataset_fn))


def _mean_image(strategy, iterator):
  """The mean image of the next global batch (the same on every replica and worker)."""
  per_replica = strategy.run(lambda images: tf.reduce_mean(images[0], axis=0),
                             args=(next(iterator),))
  return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)


def _run(config, model, step, manager, iterator, figures, writer, run_steps, interrupts=None):
  """Runs chunks of steps up to each summary, image and checkpoint boundary.

  Each chunk, in order: run the compiled steps up to the next boundary, apply
  the NaN policy (--on_nan), log, write images, save a checkpoint, and stop
  if a signal asked to.
  """
  run = _RunState(config, model, manager, figures, writer, interrupts, int(step.numpy()))
  while run.current < config.train_steps:
    status = run.one_chunk(run_steps, iterator)
    run.apply_nan_policy(status)
    run.log()
    run.write_images()
    run.save_checkpoint()
    run.stop_if_signalled()
  writer.flush()
  run.progress.finish()
  return run.last


class _RunState:
  """What the loop keeps between chunks, and the named steps of one chunk (see _run)."""

  def __init__(self, config, model, manager, figures, writer, interrupts, start):
    self.config, self.model, self.manager = config, model, manager
    self.figures, self.writer, self.interrupts = figures, writer, interrupts
    self.current = start
    self.progress = _Progress(config.train_steps, start, model.progress_keys)
    self.intervals = (config.log_every, config.image_every, config.checkpoint_every,
                      config.steps_per_loop)
    self.logged, self.last = _Accumulator(), {}
    self.timed_steps, self.timed_seconds, self.first_chunk = 0, 0.0, True
    self.skipped = 0  # steps left out by --on_nan=skip in this process

  @property
  def done(self):
    return self.current == self.config.train_steps

  @property
  def stopping(self):
    return self.interrupts is not None and self.interrupts.signal_name is not None

  def _at(self, every):
    return self.current % every == 0 or self.done or self.stopping

  def one_chunk(self, run_steps, iterator):
    """Runs the steps up to the next boundary, accumulates their means; returns their status."""
    boundary = min([(self.current // k + 1) * k for k in self.intervals]
                   + [self.config.train_steps])
    began = time.perf_counter()
    outputs = run_steps(iterator, tf.constant(boundary - self.current))
    seconds = time.perf_counter() - began
    status = {k: outputs.pop(k).numpy() for k in STATUS_KEYS}
    means = {k: float(v) for k, v in outputs.items()}
    num_steps = int(status["steps"])
    self.current += num_steps
    if not self.first_chunk:  # the first call includes tracing
      self.timed_steps += num_steps
      self.timed_seconds += seconds
    self.first_chunk = False
    if int(status["finite_steps"]):
      self.logged.add(means, int(status["finite_steps"]))
    self.progress.update(self.current, means)
    return status

  def apply_nan_policy(self, status):
    """--on_nan=stop raises TrainingStopped; skip counts the steps left out and warns."""
    if status["first_bad_step"] < 0:
      return
    first_bad = int(status["first_bad_step"])
    bad = {name: float(value) for name, value in zip(self.model.metric_names,
                                                      status["bad_values"])
           if not np.isfinite(value)}
    if self.config.on_nan == "stop":
      raise TrainingStopped(_nan_message(first_bad, bad, self.manager), 1)
    left_out = int(status["steps"]) - int(status["finite_steps"])
    self.skipped += left_out
    logging.warning("Skipped %d step(s) with non-finite losses up to step %d (first: step %d, "
                    "%s); %d skipped in this run (--on_nan=skip).", left_out, self.current,
                    first_bad, _describe(bad), self.skipped)

  def log(self):
    """At log steps: the interval's step-weighted means and speed to TensorBoard and the log."""
    if not self._at(self.config.log_every):
      return
    perf = {}
    if self.timed_seconds:
      rate = self.timed_steps / self.timed_seconds
      perf = {"perf/steps_per_sec": rate, "perf/images_per_sec": rate * self.config.batch_size}
    if self.config.on_nan == "skip":
      perf["nan/skipped_steps"] = float(self.skipped)
    self.last = dict(self.logged.means(), **perf)
    _write_scalars(self.writer, self.current, self.last, self.model)
    self.progress.log(self.current, self.last)
    self.logged, self.timed_steps, self.timed_seconds = _Accumulator(), 0, 0.0

  def write_images(self):
    """At image steps (chief only): sample and reconstruction grids, the served test error."""
    if self.figures and self._at(self.config.image_every):
      with writing("images", self.config.model_dir):
        self.figures.write(self.writer, self.current)

  def save_checkpoint(self):
    if self._at(self.config.checkpoint_every):
      with writing("a checkpoint", self.manager.directory):
        self.manager.save(checkpoint_number=self.current)

  def stop_if_signalled(self):
    """After SIGINT/SIGTERM, once the chunk's checkpoint is written: TrainingStopped."""
    if not self.stopping:
      return
    self.writer.flush()
    self.progress.finish()
    raise TrainingStopped(
        f"Stopped by {self.interrupts.signal_name} after step {self.current} of "
        f"{self.config.train_steps}; checkpoint {self.manager.latest_checkpoint} written. "
        "Run the same command to resume.", 128 + self.interrupts.signal_number)


def _describe(bad):
  return ", ".join(f"{name} = {value}" for name, value in bad.items()) or "a non-finite metric"


def _nan_message(bad_step, bad, manager):
  latest = manager.latest_checkpoint
  kept = (f"the last good checkpoint, {latest}, is kept; rerunning the command resumes from it"
          if latest else "no checkpoint was written yet")
  return (f"Step {bad_step}: {_describe(bad)}. Training stopped (--on_nan=stop) and wrote "
          f"nothing after step {bad_step - 1}; {kept}. Lower --learning_rate, or use "
          "--on_nan=skip to skip such steps.")


@contextlib.contextmanager
def writing(what, directory):
  """Turns a failed write (full disk, read-only or missing directory) into one clear error."""
  try:
    yield
  except (tf.errors.OpError, OSError) as e:
    reason = getattr(e, "message", None) or getattr(e, "strerror", None) or str(e)
    raise UserError(f"Could not write {what} under {directory}: {reason.splitlines()[0]}. "
                    "Free some space or fix the directory's permissions (or use another "
                    "--model_dir); the checkpoints already written are intact.") from None


def _remove_partial_checkpoints(directory):
  """Removes what a killed save left (ckpt-N_temp directories); such files are never read."""
  if tf.io.gfile.isdir(directory):
    for name in tf.io.gfile.listdir(directory):
      if "_temp" in name:
        tf.io.gfile.rmtree(os.path.join(directory, name.rstrip("/")))


STATUS_KEYS = ("steps", "finite_steps", "first_bad_step", "bad_values")


class _Interrupts:
  """SIGINT and SIGTERM set a variable the compiled loop reads before every step.

  A Python signal handler runs only between TensorFlow calls, so a thread
  woken through signal.set_wakeup_fd sets the variable at once, while the
  compiled loop is running: the step in progress finishes, the loop stops.
  """

  SIGNALS = (signal.SIGINT, signal.SIGTERM)

  def __init__(self):
    self.requested = tf.Variable(False, trainable=False, name="stop_requested")
    self.signal_name = None
    self.signal_number = 0
    self._previous = None

  def _set(self, number):
    if self.signal_name is None:
      self.signal_number = number
      self.signal_name = signal.Signals(number).name
    self.requested.assign(True)

  def _handler(self, number, frame):
    del frame
    self._set(number)

  def _watch(self, read_fd):
    try:
      while True:
        received = os.read(read_fd, 64)
        if not received:  # __exit__ closed the write end
          return
        for number in received:
          if number in self.SIGNALS:
            self._set(number)
    except OSError:
      return
    finally:
      os.close(read_fd)

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._fds = (read_fd, write_fd)
    self._previous = {s: signal.signal(s, self._handler) for s in self.SIGNALS}
    self._previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    threading.Thread(target=self._watch, args=(read_fd,), daemon=True,
                     name="age_tf-signals").start()
    return self

  def __exit__(self, *exc):
    if self._previous is None:
      return
    signal.set_wakeup_fd(self._previous_wakeup)
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    os.close(self._fds[1])  # the watcher reads end-of-file and returns


def _check_jit_compile(jit_compile, replicas):
  if jit_compile and replicas > 1:
    raise UserError(f"--jit_compile compiles a one-replica step, and this run has {replicas} "
                    "replicas (XLA cannot compile their cross-replica reductions); drop "
                    "--jit_compile or train on one device.")


def compile_train_steps(strategy, model, step, stop=None, on_nan="stop", nan_at_step=-1,
                        jit_compile=False):
  """A tf.function running up to N train steps in a tf.range loop.

  Returns the mean of each metric over the steps whose metrics were all
  finite, and STATUS_KEYS: how many steps ran, how many were finite, the
  first non-finite step's number (-1: none) and its metrics. Each replica
  stacks its metrics into one vector, so a step costs a single
  cross-replica reduction however many metrics the method reports.

  The loop ends early before a step when `stop` (a bool variable) is set,
  and, with on_nan="stop", after the first non-finite step. With
  on_nan="skip" a non-finite step's updates are not applied (the model's
  skip_non_finite_updates, which BidirectionalModel.apply_gradients honours)
  and the BatchNorm statistics its forward passes changed are restored.
  nan_at_step >= 1 replaces that step's real images with NaN (the test hook
  of --debug_nan_at_step). jit_compile compiles each train_step with XLA
  (one replica: XLA cannot compile a step whose BatchNorm and optimizer
  reduce across MirroredStrategy replicas).
  """
  names = model.metric_names
  skip = on_nan == "skip"
  # The policy is the loop's; the model's updates carry it out (base.apply_gradients).
  model.skip_non_finite_updates = skip
  state = model.state_variables() if skip else []
  _check_jit_compile(jit_compile, strategy.num_replicas_in_sync)

  def train_step(images, step_value):
    with model.step_draws(step_value):
      return model.train_step(images)

  if jit_compile:
    train_step = tf.function(train_step, jit_compile=True)

  # Autograph converts run_steps' loop and conditions; below them every
  # branch is Python's, so converting the methods' code would only cost
  # seconds of tracing per process.
  @tf.autograph.experimental.do_not_convert
  def replica_step(images):
    if nan_at_step >= 1:
      images = tf.where(step + 1 == nan_at_step, tf.fill(tf.shape(images), float("nan")),
                        images)
    saved = [tf.identity(v.value) for v in state]
    outputs = train_step(images, step.read_value())
    if set(outputs) != set(names):
      raise ValueError(f"train_step returned {sorted(outputs)}, not metric_names {names}")
    vector = tf.stack([tf.cast(outputs[k], tf.float32) for k in names])
    if state:
      finite = base.all_replicas(tf.reduce_all(tf.math.is_finite(vector)))
      for variable, before in zip(state, saved):
        variable.assign(tf.where(finite, variable.value, before))
    return vector

  @tf.function
  def run_steps(iterator, num_steps):
    sums = tf.zeros([len(names)])
    steps, finite_steps = tf.constant(0), tf.constant(0)
    first_bad_step = tf.constant(-1, tf.int64)
    bad_values = tf.zeros([len(names)])
    for _ in tf.range(num_steps):
      if stop is not None and stop:
        break
      per_replica = strategy.run(replica_step, args=(next(iterator),))
      vector = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
      step.assign_add(1)
      steps += 1
      finite = tf.reduce_all(tf.math.is_finite(vector))
      if finite:
        sums += vector
        finite_steps += 1
      elif first_bad_step < 0:
        first_bad_step = tf.identity(step.read_value())
        bad_values = vector
      if not skip and first_bad_step >= 0:
        break
    means = sums / tf.cast(tf.maximum(finite_steps, 1), tf.float32)
    outputs = {k: means[i] for i, k in enumerate(names)}
    outputs.update(steps=steps, finite_steps=finite_steps, first_bad_step=first_bad_step,
                   bad_values=bad_values)
    return outputs

  return run_steps


class _Accumulator:
  """Step-weighted means of metrics over a logging interval."""

  def __init__(self):
    self.sums, self.count = {}, 0

  def add(self, means, num_steps):
    for k, v in means.items():
      self.sums[k] = self.sums.get(k, 0.0) + v * num_steps
    self.count += num_steps

  def means(self):
    return {k: v / self.count for k, v in self.sums.items()}


def _write_scalars(writer, step, metrics, model):
  with writer.as_default(step=step):
    for name, value in metrics.items():
      if not name.startswith(UNLOGGED_PREFIX):
        tf.summary.scalar(name, value)
    model.write_summaries(metrics)
    for name, (optimizer, _) in model.optimizers().items():
      tf.summary.scalar(f"learning_rate/{name.replace('_optimizer', '')}",
                        float(optimizer.learning_rate))


class _Figures:
  """What the export would serve now: samples, reconstructions and the test reconstruction error.

  Samples come from a fixed z, reconstructions of fixed test images; the
  grids go to TensorBoard and PNG. The networks run in inference mode with
  the statistics the export serves (--bn_statistics): with recompute, the
  statistics pass runs on the model and training's moving averages are
  restored afterwards, so checkpoints and the training trajectory are
  untouched. The test reconstruction error (pixel MSE in [0, 1] over
  NUM_TEST_RECONSTRUCTIONS test images, inference_statistics.sample_images'
  seeded sample) is logged as test/recon_pixel_mse
  (served), test/recon_pixel_mse_moving (the moving averages; with
  recompute only) and test/recon_pixel_mse_batch_stats (training mode,
  batches of --batch_size).
  """

  def __init__(self, config, spec, model):
    self.model_dir = config.model_dir
    self.model = model
    self.batch_size = config.batch_size
    self.fixed_z = tf.constant(prior_lib.numpy_draws(
        np.random.default_rng(config.seed), NUM_SAMPLES, config.latent_dim, config.prior))
    self.test_images = self.recon_images = None
    if spec.num_test:
      self.test_images = data.test_images(spec, NUM_RECONSTRUCTIONS, config.data_dir or None,
                                          config.download)
      self.recon_images = data.to_float(inference_statistics.sample_images(
          spec, "test", NUM_TEST_RECONSTRUCTIONS, config.seed, config.data_dir or None,
          config.download))
    settings = inference_statistics.settings_of(config)
    self.calibration = inference_statistics.calibration_for(config, settings, spec)
    self.statistics_pass = None
    served = model
    if self.calibration is not None:
      self.statistics_pass = inference_statistics.StatisticsPass(model, settings)
      served = self.statistics_pass.served
    self._generate = tf.function(lambda z: served.generate(z, training=False), autograph=False)
    self._reconstruct = tf.function(lambda x: served.reconstruct(x, training=False),
                                    reduce_retracing=True, autograph=False)
    self._reconstruct_moving = tf.function(lambda x: model.reconstruct(x, training=False),
                                           reduce_retracing=True, autograph=False)
    self._reconstruct_training = tf.function(lambda x: model.reconstruct(x, training=True),
                                             reduce_retracing=True, autograph=False)

  def _recon_error(self, reconstruct, batch_size):
    errors = []
    for start in range(0, int(self.recon_images.shape[0]), batch_size):
      images = self.recon_images[start:start + batch_size]
      errors.append(float(tf.reduce_mean(tf.square((reconstruct(images) - images) / 2.0)))
                    * int(images.shape[0]))
    return sum(errors) / int(self.recon_images.shape[0])

  def write(self, writer, step):
    scalars = {}
    with inference_statistics.served(self.model, self.statistics_pass, self.calibration):
      grids = {"samples": images_lib.grid(self._generate(self.fixed_z))}
      if self.test_images is not None:
        pairs = images_lib.interleave(self.test_images, self._reconstruct(self.test_images))
        grids["reconstructions"] = images_lib.grid(pairs)
        scalars["test/recon_pixel_mse"] = self._recon_error(self._reconstruct, 250)
    if self.recon_images is not None:
      if self.statistics_pass is not None:
        scalars["test/recon_pixel_mse_moving"] = self._recon_error(self._reconstruct_moving, 250)
      with inference_statistics.preserved(self.model):
        scalars["test/recon_pixel_mse_batch_stats"] = self._recon_error(
            self._reconstruct_training, self.batch_size)
    with writer.as_default(step=step):
      for name, grid in grids.items():
        tf.summary.image(f"images/{name}", grid[None])
      for name, value in scalars.items():
        tf.summary.scalar(name, value)
    for name, grid in grids.items():
      images_lib.write_png(os.path.join(self.model_dir, f"{name}.png"), grid)


class _Progress:
  """A progress bar with ETA on a terminal; absl log lines at each log step otherwise."""

  def __init__(self, total, start, keys):
    self.total, self.start, self.began, self.keys = total, start, time.time(), keys
    self.bar = None
    if sys.stdout.isatty():
      self.bar = keras.utils.Progbar(total, stateful_metrics=keys)
      self.bar.update(start)

  def update(self, step, metrics):
    if self.bar is not None:
      self.bar.update(step, [(k, v) for k, v in metrics.items() if k in self.keys])

  def log(self, step, metrics):
    if self.bar is not None:
      return
    elapsed = time.time() - self.began
    eta = elapsed / max(step - self.start, 1) * (self.total - step)
    shown = "  ".join(f"{k} {metrics[k]:.4g}" for k in self.keys if k in metrics)
    logging.info("step %d/%d  %s  (%.0f s elapsed, ETA %.0f s)", step, self.total, shown,
                 elapsed, eta)

  def finish(self):
    if self.bar is not None:
      sys.stdout.write("\n")
      sys.stdout.flush()
