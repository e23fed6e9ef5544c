"""Native against sub-pixel transposed convolutions: one training step of each, same process.

    python benchmarks/transposed_conv.py --dataset=cifar10            # AGE, authors' setting
    python benchmarks/transposed_conv.py --dataset=cifar10 --jit_compile
    python benchmarks/transposed_conv.py --method=gali4 --dataset=svhn

Every training flag applies (--method, --batch_size, --jit_compile,
--mixed_precision ...) except --transposed_conv, which this compares. The
same method is built twice in one process, with --transposed_conv=native and
=subpixel, each step compiled as training compiles it
(loop.compile_train_steps, one replica, --steps_per_loop steps per call) on a
fixed in-memory batch. The two are then timed in alternating rounds, so a
machine whose speed drifts slows both alike; the output is each one's median
and range of seconds per step and the ratio native / subpixel, plus the
largest relative difference of the two models' outputs (encoder codes and
generated images from the same weights), which should be float rounding.
"""

import dataclasses
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags

from age_tf import config as config_lib
from age_tf import loop
from age_tf.methods import METHODS
from age_tf.networks import subpixel

flags.DEFINE_integer("rounds", 5, "Alternating timed rounds; medians and ranges are reported.")
flags.DEFINE_integer("steps", 3, "Steps per timed round of each algorithm.")
FLAGS = flags.FLAGS


def _compiled(config, algorithm):
  config = dataclasses.replace(config, transposed_conv=algorithm)
  model = METHODS[config.method].from_config(config)
  model.build_optimizers()
  step = tf.Variable(0, dtype=tf.int64)
  shape = (model.batches_per_step, config.batch_size, config.image_size, config.image_size,
           config.channels)
  images = tf.random.stateless_uniform(shape, [0, 0], -1.0, 1.0)
  iterator = iter(tf.data.Dataset.from_tensors(images).repeat())
  run_steps = loop.compile_train_steps(tf.distribute.get_strategy(), model, step,
                                       jit_compile=config.jit_compile)
  return model, lambda steps: run_steps(iterator, tf.constant(steps))


def _max_relative_difference(native, fast, config):
  for a, b in zip(native.variables, fast.variables):
    b.assign(a)
  images = tf.random.stateless_uniform(
      (8, config.image_size, config.image_size, config.channels), [1, 0], -1.0, 1.0)
  codes = tf.random.stateless_normal((8, config.latent_dim), [2, 0])
  worst = 0.0
  for network in ("encoder", "generator"):
    inputs = images if network == "encoder" else codes
    expected = getattr(native, network)(inputs, training=False)
    actual = getattr(fast, network)(inputs, training=False)
    worst = max(worst, float(tf.reduce_max(tf.abs(expected - actual))
                             / tf.reduce_max(tf.abs(expected))))
  return worst


def main(argv):
  del argv
  config = config_lib.from_flags()
  per_call = min(config.steps_per_loop, FLAGS.steps)
  calls = max(FLAGS.steps // per_call, 1)
  models, steppers = {}, {}
  for algorithm in (subpixel.NATIVE, subpixel.SUBPIXEL):
    models[algorithm], steppers[algorithm] = _compiled(config, algorithm)
    float(next(iter(steppers[algorithm](per_call).values())))  # trace and warm up
  seconds = {algorithm: [] for algorithm in steppers}
  for _ in range(FLAGS.rounds):
    for algorithm, run in steppers.items():
      began = time.perf_counter()
      for _ in range(calls):
        outputs = run(per_call)
      float(next(iter(outputs.values())))
      seconds[algorithm].append((time.perf_counter() - began) / (calls * per_call))
  difference = _max_relative_difference(models[subpixel.NATIVE], models[subpixel.SUBPIXEL],
                                        config)
  medians = {a: float(np.median(s)) for a, s in seconds.items()}
  print(f"{config.method} {config.dataset} {config.image_size}x{config.image_size}x"
        f"{config.channels} batch {config.batch_size} width {config.width} "
        f"{config.mixed_precision} XLA {'on' if config.jit_compile else 'off'}, "
        f"{FLAGS.rounds} alternating rounds of {calls * per_call} steps:")
  for algorithm, s in seconds.items():
    print(f"  {algorithm:8s} {medians[algorithm]:.3f} s/step (range {min(s):.3f}-{max(s):.3f})")
  print(f"  native / subpixel: {medians['native'] / medians['subpixel']:.2f}x; "
        f"outputs differ by at most {difference:.1e} (relative)")


if __name__ == "__main__":
  app.run(main)
