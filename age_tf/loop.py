"""The training loop: strategy, input, compiled steps, checkpoints, TensorBoard summaries, progress."""

import os
import sys
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
from age_tf.errors import UserError
from age_tf.methods import METHODS

NUM_SAMPLES = 64  # 8 x 8 sample grid
NUM_RECONSTRUCTIONS = 32  # 32 real | reconstruction pairs, 8 x 8 grid
SAMPLES_PNG = "samples.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"
# Metrics under this prefix are method-rendered (e.g. a confusion matrix), not scalars.
UNLOGGED_PREFIX = "confusion/"


def train(config, strategy=None):
  """Trains (or resumes) the run `config` describes; returns the last logged metrics.

  Nothing is written to model_dir until the model, its checkpoint and the
  input pipeline exist, so a bad dataset or directory fails cleanly. Under a
  multi-worker strategy only the chief writes flags.json, summaries, PNGs and
  model_dir's checkpoints; the other workers save theirs (checkpoint saving
  is collective) to a temporary directory that is removed at the end, and
  every worker resumes from the chief's latest checkpoint.
  """
  spec = config_lib.dataset_spec(config)
  strategy = strategy or distribute.make_strategy(config.strategy, config.num_cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    raise UserError(f"--batch_size={config.batch_size} does not split evenly over {replicas} "
                    f"replicas; use a multiple of {replicas}.")
  chief = distribute.is_chief(strategy)
  checkpointing.check_compatible(config)
  model, step, manager = _restore_or_build(config, strategy, chief)
  start = int(step.numpy())
  logging.info("%s on %s: %dx%dx%d images, M=%d, %d steps (%d per epoch), batch %d on %d "
               "replica(s); model_dir %s%s", config.method, spec.name, spec.image_size,
               spec.image_size, spec.channels, config.latent_dim, config.train_steps,
               config.steps_per_epoch, config.batch_size, replicas, config.model_dir,
               f"; resuming at step {start}" if start else "")
  if start >= config.train_steps:
    logging.info("Already trained to step %d (--train_steps=%d); nothing to do.",
                 start, config.train_steps)
    return {}
  iterator = _input(config, spec, strategy, model, seed=config.seed + start)
  figures = _Figures(config, spec, model) if chief else None
  if chief:
    checkpointing.save_flags(config)
    writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
  else:
    writer = tf.summary.create_noop_writer()
  if start == 0:
    if model.data_dependent_init:
      model.initialize_from_data(_mean_image(strategy, iterator))
    if figures:
      figures.write(writer, 0)
  try:
    last = _run(config, model, step, manager, iterator, figures, writer,
                compile_train_steps(strategy, model, step))
  finally:
    if not chief and tf.io.gfile.exists(manager.directory):
      tf.io.gfile.rmtree(manager.directory)
  logging.info("Trained to step %d; checkpoint %s; weights fingerprint %.10e",
               int(step.numpy()), manager.latest_checkpoint if chief else "(the chief's)",
               weights_fingerprint(model))
  return last


def weights_fingerprint(model):
  """The sum of squares of every model variable (float64): equal on workers in sync."""
  return float(sum(np.sum(np.square(v.numpy().astype(np.float64))) for v in model.variables))


def _restore_or_build(config, strategy, chief=True):
  """The model, step counter and checkpoint manager, restored from the latest checkpoint."""
  replicas = strategy.num_replicas_in_sync
  directory = checkpointing.checkpoint_dir(config.model_dir)
  with strategy.scope():
    model = METHODS[config.method].from_config(config, synchronized_bn=replicas > 1)
    model.build_optimizers()
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step",
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
    checkpoint = checkpointing.make_checkpoint(model, step)
    latest = tf.train.latest_checkpoint(directory)
    if latest:
      checkpoint.restore(latest).assert_existing_objects_matched()
    if not chief:
      task_type, task_id = distribute.worker_id(strategy)
      directory = os.path.join(config.model_dir, f".{task_type}-{task_id}-tmp")
    manager = tf.train.CheckpointManager(
        checkpoint, directory, max_to_keep=config.keep_checkpoints if chief else 1,
        step_counter=step)
  return model, step, manager


def _input(config, spec, strategy, model, seed):
  """The distributed training iterator; each input pipeline reads its own shard."""

  def dataset_fn(input_context):
    return data.train_dataset(
        spec, input_context.get_per_replica_batch_size(config.batch_size),
        model.batches_per_step, seed=seed, data_dir=config.data_dir or None,
        download=config.download, cache=config.cache, shuffle_buffer=config.shuffle_buffer,
        input_context=input_context)

  # Reseeded with the start step, so a resumed run does not replay the first batches.
  return iter(strategy.distribute_datasets_from_function(dataset_fn))


def _mean_image(strategy, iterator):
  """The mean image of the next global batch (the same on every replica and worker)."""
  per_replica = strategy.run(lambda images: tf.reduce_mean(images[0], axis=0),
                             args=(next(iterator),))
  return strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)


def _run(config, model, step, manager, iterator, figures, writer, run_steps):
  """Runs chunks of steps up to each summary, image and checkpoint boundary."""
  current = int(step.numpy())
  progress = _Progress(config.train_steps, current, model.progress_keys)
  intervals = (config.log_every, config.image_every, config.checkpoint_every,
               config.steps_per_loop)
  logged, last = _Accumulator(), {}
  timed_steps, timed_seconds, first_chunk = 0, 0.0, True
  while current < config.train_steps:
    boundary = min([(current // k + 1) * k for k in intervals] + [config.train_steps])
    num_steps = boundary - current
    began = time.perf_counter()
    means = {k: float(v) for k, v in run_steps(iterator, tf.constant(num_steps)).items()}
    seconds = time.perf_counter() - began
    current += num_steps
    if not first_chunk:  # the first call includes tracing
      timed_steps, timed_seconds = timed_steps + num_steps, timed_seconds + seconds
    first_chunk = False
    logged.add(means, num_steps)
    done = current == config.train_steps
    if current % config.log_every == 0 or done:
      perf = {}
      if timed_seconds:
        rate = timed_steps / timed_seconds
        perf = {"perf/steps_per_sec": rate, "perf/images_per_sec": rate * config.batch_size}
      last = dict(logged.means(), **perf)
      _write_scalars(writer, current, last, model)
      progress.log(current, last)
      logged, timed_steps, timed_seconds = _Accumulator(), 0, 0.0
    progress.update(current, means)
    if figures and (current % config.image_every == 0 or done):
      figures.write(writer, current)
    if current % config.checkpoint_every == 0 or done:
      manager.save(checkpoint_number=current)
  writer.flush()
  progress.finish()
  return last


def compile_train_steps(strategy, model, step):
  """A tf.function running N train steps in a tf.range loop; returns their mean metrics.

  Each replica stacks its metrics into one vector, so a step costs a single
  cross-replica reduction however many metrics the method reports.
  """
  names = model.metric_names

  def replica_step(images):
    with model.step_draws(step):
      outputs = model.train_step(images)
    if set(outputs) != set(names):
      raise ValueError(f"train_step returned {sorted(outputs)}, not metric_names {names}")
    return tf.stack([tf.cast(outputs[k], tf.float32) for k in names])

  @tf.function
  def run_steps(iterator, num_steps):
    sums = tf.zeros([len(names)])
    for _ in tf.range(num_steps):
      per_replica = strategy.run(replica_step, args=(next(iterator),))
      sums += strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None)
      step.assign_add(1)
    means = sums / tf.cast(num_steps, tf.float32)
    return {k: means[i] for i, k in enumerate(names)}

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
  """Samples from a fixed z and reconstructions of fixed test images: TensorBoard and PNG."""

  def __init__(self, config, spec, model):
    self.model_dir = config.model_dir
    z = np.random.default_rng(config.seed).standard_normal((NUM_SAMPLES, config.latent_dim))
    if config.prior == "sphere":
      z /= np.linalg.norm(z, axis=1, keepdims=True)
    self.fixed_z = tf.constant(z, tf.float32)
    self.test_images = None
    if spec.num_test:
      self.test_images = data.test_images(spec, NUM_RECONSTRUCTIONS, config.data_dir or None,
                                          config.download)
    self._generate = tf.function(lambda z: model.generate(z, training=False))
    self._reconstruct = tf.function(lambda x: model.reconstruct(x, training=False))

  def write(self, writer, step):
    grids = {"samples": images_lib.grid(self._generate(self.fixed_z))}
    if self.test_images is not None:
      pairs = images_lib.interleave(self.test_images, self._reconstruct(self.test_images))
      grids["reconstructions"] = images_lib.grid(pairs)
    with writer.as_default(step=step):
      for name, grid in grids.items():
        tf.summary.image(f"images/{name}", grid[None])
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
