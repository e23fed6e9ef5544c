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

FLOPs per step are counted from the graph of one training step at the global
batch (TensorFlow's profiler: Conv2D, its two backprop ops, MatMul; the
elementwise ops are not counted), so GFLOP/s is the rate of the convolution
and matmul work. The same process measures the machine's float32 peaks (a
2048x2048 matmul and a 3x3 convolution of 64x32x32x128 to 128 channels,
medians of 5), so the ratio to the peak compares like with like on a
machine whose speed varies from day to day. Peak RSS is the process's
maximum resident set size at the end.
"""

import os
import platform
import resource
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


def flops_per_step(config):
  """Floating-point operations of one training step at the global batch, from its graph."""
  from tensorflow.python.profiler import model_analyzer  # pylint: disable=g-import-not-at-top
  from tensorflow.python.profiler import option_builder  # pylint: disable=g-import-not-at-top
  model = METHODS[config.method].from_config(config)
  model.build_optimizers()
  step = tf.Variable(0, dtype=tf.int64)
  shape = (model.batches_per_step, config.batch_size, config.image_size, config.image_size,
           config.channels)

  @tf.function
  def one_step(images):
    with model.step_draws(step):
      return model.train_step(images)

  graph = one_step.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
  options = option_builder.ProfileOptionBuilder.float_operation()
  options["output"] = "none"
  return model_analyzer.profile(graph, options=options).total_float_ops


def _median_seconds(fn, *args, repeats=5):
  fn(*args).numpy()  # trace and warm up
  seconds = []
  for _ in range(repeats):
    began = time.perf_counter()
    fn(*args).numpy()
    seconds.append(time.perf_counter() - began)
  return float(np.median(seconds))


def machine_peaks():
  """float32 GFLOP/s of a 2048^2 matmul and of a 3x3 convolution, measured now."""
  a = tf.random.stateless_normal([2048, 2048], [1, 2])
  matmul = 2 * 2048 ** 3 / _median_seconds(tf.function(tf.matmul), a, a) / 1e9
  x = tf.random.stateless_normal([64, 32, 32, 128], [3, 4])
  k = tf.random.stateless_normal([3, 3, 128, 128], [5, 6])
  conv_fn = tf.function(lambda x, k: tf.nn.conv2d(x, k, 1, "SAME"))
  conv = 2 * 64 * 32 * 32 * 3 * 3 * 128 * 128 / _median_seconds(conv_fn, x, k) / 1e9
  return matmul, conv


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
  gflop = flops_per_step(config) / 1e9
  matmul_peak, conv_peak = machine_peaks()
  rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
  print(f"measured now: float32 matmul {matmul_peak:.0f} GFLOP/s, conv {conv_peak:.0f} GFLOP/s")
  print("| method | dataset | replicas | batch | image | M | width | s/step median | range | "
        "steps/s | images/s | GFLOP/step | GFLOP/s | of conv peak | peak RSS (MiB) |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
  print(f"| {config.method} | {config.dataset} | {replicas} | {config.batch_size} | "
        f"{config.image_size}x{config.image_size}x"
        f"{config.channels} | {config.latent_dim} | {config.width} | {median:.3f} | "
        f"{seconds.min():.3f}-{seconds.max():.3f} | {1 / median:.2f} | "
        f"{config.batch_size / median:.0f} | {gflop:.1f} | {gflop / median:.0f} | "
        f"{gflop / median / conv_peak:.0%} | {rss_mib:.0f} |")


if __name__ == "__main__":
  app.run(main)
