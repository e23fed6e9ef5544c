"""Times steady-state training iterations: median and spread of seconds per step.

    python benchmarks/throughput.py --dataset=cifar10            # the authors' CIFAR-10 setting
    python benchmarks/throughput.py --dataset=digits --repeats=5
    python benchmarks/throughput.py --dataset=cifar10 --num_cpu_replicas=2   # 2 replicas
    python benchmarks/throughput.py --method=gali4 --dataset=svhn --strategy=mirrored

Each step is one training step of --method (AGE: one encoder and
`generator_steps` generator updates), run by the same compiled multi-step
loop and --strategy as training (loop.compile_train_steps) after a warm-up
call that traces it; each replica gets its share of the global batch. The input is a fixed in-memory batch of the
dataset's shape (no download needed; the cost of a step does not depend on
pixel values). Prints a markdown table row per dataset.
"""

import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags

from age_tf import config as config_lib
from age_tf import distribute
from age_tf import loop
from age_tf.methods import METHODS

flags.DEFINE_integer("repeats", 5, "Timed runs; the median and range are reported.")
flags.DEFINE_integer("steps", 10, "Steps per timed run.")
FLAGS = flags.FLAGS


def time_dataset(config):
  strategy = distribute.make_strategy(config.strategy, config.num_cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  with strategy.scope():
    model = METHODS[config.method].from_config(config, synchronized_bn=replicas > 1)
    model.build_optimizers()
    step = tf.Variable(0, dtype=tf.int64,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
  shape = (model.batches_per_step, config.batch_size // replicas, config.image_size,
           config.image_size, config.channels)
  images = tf.random.stateless_uniform(shape, [0, 0], -1.0, 1.0)
  dataset = tf.data.Dataset.from_tensors(images).repeat()
  iterator = iter(strategy.distribute_datasets_from_function(lambda _: dataset))
  run_steps = loop.compile_train_steps(strategy, model, step)
  run_steps(iterator, tf.constant(2))  # trace and warm up
  seconds = []
  for _ in range(FLAGS.repeats):
    began = time.perf_counter()
    float(next(iter(run_steps(iterator, tf.constant(FLAGS.steps)).values())))
    seconds.append((time.perf_counter() - began) / FLAGS.steps)
  return np.array(seconds), replicas


def _cpu_model():
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv):
  del argv
  config = config_lib.from_flags()
  seconds, replicas = time_dataset(config)
  median = float(np.median(seconds))
  print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
  print("| method | dataset | replicas | batch | image | M | width | s/step median | range | "
        "steps/s | images/s |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  print(f"| {config.method} | {config.dataset} | {replicas} | {config.batch_size} | "
        f"{config.image_size}x{config.image_size}x"
        f"{config.channels} | {config.latent_dim} | {config.width} | {median:.3f} | "
        f"{seconds.min():.3f}-{seconds.max():.3f} | {1 / median:.2f} | "
        f"{config.batch_size / median:.0f} |")


if __name__ == "__main__":
  app.run(main)
