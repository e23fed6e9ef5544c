"""Times steady-state training iterations and the input pipeline alone; prints a markdown row.

    python benchmarks/throughput.py --dataset=cifar10            # the authors' CIFAR-10 setting
    python benchmarks/throughput.py --dataset=cifar10 --jit_compile
    python benchmarks/throughput.py --dataset=digits --mixed_precision=bfloat16
    python benchmarks/throughput.py --dataset=digits --num_cpu_replicas=2   # 2 replicas
    python benchmarks/throughput.py --method=gali4 --dataset=svhn --steps_per_loop=1

Every training flag applies (--method, --batch_size, --strategy,
--num_cpu_replicas, --jit_compile, --mixed_precision, --steps_per_loop ...).
Each step is one training step of --method (AGE: one encoder and
`generator_steps` generator updates), run by the same compiled multi-step
loop and strategy as training (loop.compile_train_steps), --steps_per_loop
steps per tf.function call, after a warm-up call that traces it; each replica
gets its share of the global batch. The training input is a fixed in-memory
batch of the dataset's shape (the cost of a step does not depend on pixel
values), so the step is timed apart from the pipeline.

The pipeline is timed on its own: the real training stream of --dataset
(data.train_dataset: decode, resize, scale, shuffle, batch, prefetch),
images per second over --data_batches batches after a warm-up, reported as
a multiple of the training images/s (the target: >= 10x). A tfds dataset that
is not prepared under --data_dir is reported as not measured, with no
download attempted, unless --mock_examples=N: then the stream reads N
tfds.testing.mock_data examples of the dataset's shape and is timed once a
full pass has filled the in-memory cache (the steady state of every epoch
after the first; the first epoch also reads and decodes the files, which
this does not time), and the cell says "mock".

FLOPs per step are counted from the graph of one training step at the global
batch (the TensorFlow profiler's per-op statistics for Conv2D, MatMul and a
few elementwise ops with small counts; the two backprop ops of Conv2D
counted exactly, as the work of their forward convolution: see
conv_backprop_flops), so GFLOP/s is essentially the rate of the
convolution and matmul work. Only ops that run
are counted: those the step's outputs and variable updates depend on
(gradient functions also build filter gradients of networks a loss only
differentiates through, which TensorFlow prunes). They are counted on the
native formulation of the transposed convolutions whichever
--transposed_conv runs: the sub-pixel one does more multiply-adds (up to
1.56x on a 4x4 map) for the same result, and the figure is the model's
work. The same process measures the machine's float32 peaks (a 2048x2048
matmul and a 3x3 convolution of 64x32x32x128 to 128 channels, medians of
5), so the ratio to the peak compares like with like on a
machine whose speed varies from day to day. Peak RSS is the process's
maximum resident set size at the end.
"""

import contextlib
import dataclasses
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
from age_tf import data
from age_tf import distribute
from age_tf import loop
from age_tf.errors import UserError
from age_tf.methods import METHODS
from age_tf.networks import subpixel

flags.DEFINE_integer("repeats", 5, "Timed runs; the median and range are reported.")
flags.DEFINE_integer("steps", 10, "Steps per timed run (a multiple of --steps_per_loop).")
flags.DEFINE_integer("data_batches", 200, "Batches the input-pipeline timing reads.")
flags.DEFINE_integer("mock_examples", 0, "If > 0, time the input pipeline of a tfds dataset on "
                     "this many tfds.testing.mock_data examples (random pixels of the "
                     "dataset's shape) after one pass has filled the cache: the steady state "
                     "of every epoch after the first, without reading and decoding files. For "
                     "datasets not prepared on this machine.")
FLAGS = flags.FLAGS


def time_dataset(config):
  strategy = distribute.make_strategy(config.strategy, config.num_cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  with strategy.scope():
    model = METHODS[config.method].create(config, synchronized_bn=replicas > 1)
    model.build_optimizers()
    step = tf.Variable(0, dtype=tf.int64,
                       aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
  shape = (model.batches_per_step, config.batch_size // replicas, config.image_size,
           config.image_size, config.channels)
  images = tf.random.stateless_uniform(shape, [0, 0], -1.0, 1.0)
  dataset = tf.data.Dataset.from_tensors(images).repeat()
  iterator = iter(strategy.distribute_datasets_from_function(lambda _: dataset))
  run_steps = loop.compile_train_steps(strategy, model, step, jit_compile=config.jit_compile)
  per_call = tf.constant(min(config.steps_per_loop, FLAGS.steps))
  calls = max(FLAGS.steps // int(per_call), 1)
  float(next(iter(run_steps(iterator, per_call).values())))  # trace and warm up
  seconds = []
  for _ in range(FLAGS.repeats):
    began = time.perf_counter()
    for _ in range(calls):
      outputs = run_steps(iterator, per_call)
    float(next(iter(outputs.values())))
    seconds.append((time.perf_counter() - began) / (calls * int(per_call)))
  return np.array(seconds), replicas, model.batches_per_step


def _mocked(spec):
  return FLAGS.mock_examples > 0 and spec.source == "tfds"


def data_images_per_second(config, batches):
  """Images/s of the training stream alone, or None when the data is not on disk.

  With --mock_examples, a tfds dataset's stream reads tfds.testing.mock_data
  examples, timed once a full pass has filled the cache.
  """
  spec = config_lib.dataset_spec(config)
  mock = _mocked(spec)
  warm_up = 10  # fill the shuffle buffer
  context = contextlib.nullcontext()
  if mock:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    context = tfds.testing.mock_data(num_examples=FLAGS.mock_examples)
    spec = dataclasses.replace(spec, num_train=FLAGS.mock_examples)
    warm_up += -(-FLAGS.mock_examples // (batches * config.batch_size))  # and the cache
  with context:
    try:
      ds = data.train_dataset(spec, config.batch_size, batches, seed=config.seed,
                              data_dir=config.data_dir or None, download=False,
                              cache=config.cache, shuffle_buffer=config.shuffle_buffer)
    except UserError as e:
      print(f"input pipeline not measured: {e}")
      return None
    iterator = iter(ds)
    for _ in range(warm_up):
      next(iterator)
  began = time.perf_counter()
  for _ in range(FLAGS.data_batches):
    next(iterator).numpy()
  elapsed = time.perf_counter() - began
  return FLAGS.data_batches * batches * config.batch_size / elapsed


def flops_per_step(config):
  """Floating-point operations of one training step at the global batch, from its graph."""
  # Registers the flops statistics of Conv2D, its backprop ops and MatMul.
  from tensorflow.python.profiler.internal import flops_registry  # pylint: disable=g-import-not-at-top,unused-import
  from tensorflow.python.framework import ops as tf_ops  # pylint: disable=g-import-not-at-top
  config = dataclasses.replace(config, transposed_conv=subpixel.NATIVE)
  model = METHODS[config.method].create(config)
  model.build_optimizers()
  step = tf.Variable(0, dtype=tf.int64)
  shape = (model.batches_per_step, config.batch_size, config.image_size, config.image_size,
           config.channels)

  @tf.function
  def one_step(images):
    with model.step_draws(step):
      return model.train_step(images)

  graph = one_step.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
  # Only what runs: the ops the outputs and the variable updates depend on.
  # Gradient functions also build ops nothing uses (the filter gradients of
  # a network that a loss only differentiates through), which TensorFlow
  # prunes before running the step.
  graph_def = graph.as_graph_def()
  sinks = [node.name for node in graph_def.node
           if node.op.startswith(("Assign", "ResourceApply"))]
  sinks += [tensor.op.name for tensor in graph.outputs]
  runs = {node.name for node in tf.compat.v1.graph_util.extract_sub_graph(graph_def, sinks).node}
  total = 0
  for op in graph.get_operations():
    if op.name not in runs:
      continue
    if op.type in CONV_BACKPROP_OPS:
      total += conv_backprop_flops(op)
      continue
    try:  # the profiler's per-op counts (ops.RegisterStatistics)
      total += tf_ops.get_stats_for_node_def(graph, op.node_def, "flops").value or 0
    except ValueError:  # an op whose shapes are not all known: not counted
      pass
  return total


CONV_BACKPROP_OPS = ("Conv2DBackpropInput", "Conv2DBackpropFilter")


def conv_backprop_flops(op):
  """2 x the multiply-adds of a convolution's input or filter gradient (NHWC, no dilation).

  Each is as much work as the forward convolution whose output gradient it
  takes (input 2 of both ops): its output pixels x kernel height x width x
  input channels x output channels. (A transposed convolution runs as
  Conv2DBackpropInput and is counted the same way.) The profiler's own
  statistics for these two ops count every pixel of the forward
  convolution's *input* divided by the stride, which is exact only for
  'same' padding: they counted a 4x4 'valid' convolution to 1x1, as in the
  last layer of the ALI encoder and D(x), 16 times over.
  """
  if op.get_attr("data_format") not in (b"NHWC", "NHWC"):
    raise ValueError(f"{op.name}: only NHWC convolutions are counted")
  output_gradient = op.inputs[2].shape
  kernel = op.inputs[1].shape if op.type == "Conv2DBackpropInput" else op.outputs[0].shape
  if not (output_gradient[:3].is_fully_defined() and kernel.is_fully_defined()):
    return 0
  return 2 * output_gradient[:3].num_elements() * kernel.num_elements()


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
  seconds, replicas, batches = time_dataset(config)
  median = float(np.median(seconds))
  data_rate = data_images_per_second(config, batches)
  gflop = flops_per_step(config) / 1e9
  matmul_peak, conv_peak = machine_peaks()
  rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  print(f"machine: {_cpu_model()}, {os.cpu_count()} CPUs, "
        f"TensorFlow {tf.__version__}, intra-op threads "
        f"{tf.config.threading.get_intra_op_parallelism_threads() or 'default'}")
  print(f"measured now: float32 matmul {matmul_peak:.0f} GFLOP/s, conv {conv_peak:.0f} GFLOP/s")
  # Real images a step reads (GALI schedules read one batch per update).
  images_per_second = batches * config.batch_size / median
  data_cell = "not measured" if data_rate is None else (
      f"{data_rate:.0f} ({data_rate / images_per_second:.0f}x)"
      f"{', mock' if _mocked(config_lib.dataset_spec(config)) else ''}")
  print("| method | dataset | replicas | batch | image | M | width | precision | XLA | "
        "transposed conv | steps/call | s/step median | range | images/s | GFLOP/step | GFLOP/s | "
        "of conv peak | data-only images/s | peak RSS (MiB) |")
  print("|---" * 19 + "|")
  print(f"| {config.method} | {config.dataset} | {replicas} | {config.batch_size} | "
        f"{config.image_size}x{config.image_size}x"
        f"{config.channels} | {config.latent_dim} | {config.width} | "
        f"{config.mixed_precision} | {'on' if config.jit_compile else 'off'} | "
        f"{METHODS[config.method].transposed_conv(config)} | "
        f"{min(config.steps_per_loop, FLAGS.steps)} | {median:.3f} | "
        f"{seconds.min():.3f}-{seconds.max():.3f} | "
        f"{images_per_second:.0f} | {gflop:.1f} | {gflop / median:.0f} | "
        f"{gflop / median / conv_peak:.0%} | {data_cell} | {rss_mib:.0f} |")


if __name__ == "__main__":
  app.run(main)
