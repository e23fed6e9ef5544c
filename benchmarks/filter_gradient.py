"""Kernel gradients per layer: TensorFlow's Conv2DBackpropFilter against subpixel's swapped Conv2D.

    python benchmarks/filter_gradient.py                 # the ALI family's layers, one thread
    python benchmarks/filter_gradient.py --threads=2

Each row is one 'valid' layer of the ALI networks (input shape, kernel,
stride, output channels) at the batch a training step runs it with: the
SVHN networks at width 32 (batch 100; D(x) sees 400 images in GALI-4's
four classes) and the digits networks at width 8 (batch 32; D(x) 128).
The two formulations are timed in alternating rounds in this process
(medians of --rounds, --calls calls each) and checked against each other.
"""

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags

from age_tf.networks import subpixel

flags.DEFINE_integer("threads", 1, "TensorFlow intra-op threads.")
flags.DEFINE_integer("rounds", 5, "Alternating timed rounds; medians are reported.")
flags.DEFINE_integer("calls", 10, "Calls per round of each formulation.")
FLAGS = flags.FLAGS

# (name, input shape, kernel, stride, output channels)
LAYERS = [
    ("SVHN D(x) conv1, 4 classes", (400, 32, 32, 3), 5, 1, 32),
    ("SVHN D(x) conv2, 4 classes", (400, 28, 28, 32), 4, 2, 64),
    ("SVHN encoder conv1", (100, 32, 32, 3), 5, 1, 32),
    ("SVHN encoder conv2", (100, 28, 28, 32), 4, 2, 64),
    ("SVHN encoder conv3", (100, 13, 13, 64), 4, 1, 128),
    ("SVHN encoder conv4", (100, 10, 10, 128), 4, 2, 256),
    ("SVHN generator deconv5 (its gradient's input)", (100, 32, 32, 32), 5, 1, 32),
    ("SVHN generator 1x1 conv to RGB", (100, 32, 32, 32), 1, 1, 3),
    ("digits D(x) conv1, 4 classes", (128, 32, 32, 1), 5, 1, 8),
    ("digits generator deconv5 (its gradient's input)", (32, 32, 32, 8), 5, 1, 8),
    ("digits encoder conv3", (32, 13, 13, 16), 4, 1, 32),
    ("digits encoder conv4", (32, 10, 10, 32), 4, 2, 64),
]


def _native(x, dy, kernel_shape, stride):
  return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=kernel_shape, out_backprop=dy,
                                         strides=[1, stride, stride, 1], padding="VALID")


def _swapped(x, dy, kernel_shape, stride):
  return subpixel.swapped_filter_gradient(x, kernel_shape, dy, stride)


def main(argv):
  del argv
  tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
  print(f"TensorFlow {tf.__version__}, {FLAGS.threads} intra-op thread(s), float32, medians of "
        f"{FLAGS.rounds} alternating rounds of {FLAGS.calls} calls\n")
  print("| layer | input | kernel / stride -> channels | MFLOP | Conv2DBackpropFilter ms "
        "| swapped Conv2D ms | ratio | max relative difference |")
  print("|---|---|---|---|---|---|---|---|")
  rng = np.random.default_rng(0)
  for name, shape, kernel, stride, filters in LAYERS:
    out_size = (shape[1] - kernel) // stride + 1
    x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
    dy = tf.constant(rng.standard_normal((shape[0], out_size, out_size, filters),
                                         dtype=np.float32))
    kernel_shape = (kernel, kernel, shape[3], filters)
    functions = [tf.function(lambda x, dy, f=f: f(x, dy, kernel_shape, stride))
                 for f in (_native, _swapped)]
    native, swapped = (f(x, dy).numpy() for f in functions)
    difference = np.abs(native - swapped).max() / np.abs(native).max()
    times = [[], []]
    for _ in range(FLAGS.rounds):
      for i, function in enumerate(functions):
        start = time.perf_counter()
        for _ in range(FLAGS.calls):
          function(x, dy)
        times[i].append((time.perf_counter() - start) / FLAGS.calls * 1e3)
    a, b = (float(np.median(t)) for t in times)
    mflop = 2 * shape[0] * out_size * out_size * kernel * kernel * shape[3] * filters / 1e6
    print(f"| {name} | {shape} | {kernel}/{stride} -> {filters} | {mflop:.0f} | {a:.2f} | "
          f"{b:.2f} | {a / b:.2f}x | {difference:.0e} |", flush=True)


if __name__ == "__main__":
  app.run(main)
