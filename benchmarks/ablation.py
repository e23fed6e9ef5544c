"""One speed change against its baseline: a training step of each, timed in the same process.

    python benchmarks/ablation.py --change=batch_norm --dataset=cifar10       # AGE, authors' setting
    python benchmarks/ablation.py --change=transposed_conv --dataset=cifar10
    python benchmarks/ablation.py --change=transposed_conv --method=gali4 --dataset=svhn
    python benchmarks/ablation.py --change=filter_gradient --method=gali4 --dataset=svhn
    python benchmarks/ablation.py --change=filter_gradient --dataset=cifar10 --mixed_precision=bfloat16
    python benchmarks/ablation.py --change=jit_compile --dataset=cifar10
    python benchmarks/ablation.py --change=bfloat16 --dataset=cifar10

--change picks the pair (baseline -> change):

  batch_norm       Keras's BatchNormalization -> TF's fused kernel (networks/batch_norm.py)
  transposed_conv  --transposed_conv=native -> subpixel (networks/subpixel.py)
  filter_gradient  Conv2DBackpropFilter everywhere -> subpixel._filter_gradient's (float32:
                   a forward Conv2D with batch and channels swapped; half precision:
                   one matmul on small maps)
  jit_compile      graph -> XLA (--jit_compile)
  bfloat16         --mixed_precision=float32 -> bfloat16

Every other training flag applies (--method, --dataset, --batch_size,
--mixed_precision ...) to both. The same method is built twice in one
process, each step compiled as training compiles it
(loop.compile_train_steps, one replica, --steps_per_loop steps per call) on a
fixed in-memory batch. The two are then timed in alternating rounds, so a
machine whose speed drifts slows both alike; the output is each one's median
and range of seconds per step, the ratio baseline / change, and the largest
relative difference of the two models' outputs (encoder codes and generated
images from the same weights, inference mode).
"""

import contextlib
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
from age_tf.networks import batch_norm
from age_tf.networks import subpixel


@contextlib.contextmanager
def _setting(obj, name, value):
  """obj.name = value while a model is built and traced."""
  previous = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, previous)


def _config_change(field, baseline, change):
  return lambda config, which: (
      config.replace(**{field: change if which else baseline}),
      contextlib.nullcontext())


def _code_change(obj, name, baseline, change):
  return lambda config, which: (config, _setting(obj, name, change if which else baseline))


# name -> (baseline label, change label, (config, which) -> (config, context)).
CHANGES = {
    "batch_norm": ("keras", "fused",
                   _code_change(batch_norm.BatchNormalization, "fused", False, True)),
    "transposed_conv": (subpixel.NATIVE, subpixel.SUBPIXEL,
                        _config_change("transposed_conv", subpixel.NATIVE, subpixel.SUBPIXEL)),
    "filter_gradient": ("native", "fast",
                        _code_change(subpixel, "FILTER_GRADIENT", "native", "fast")),
    "jit_compile": ("graph", "xla", _config_change("jit_compile", False, True)),
    "bfloat16": ("float32", "bfloat16", _config_change("mixed_precision", "float32", "bfloat16")),
}

flags.DEFINE_enum("change", "transposed_conv", list(CHANGES), "The change to time against "
                  "its baseline (see the module docstring).")
flags.DEFINE_integer("rounds", 5, "Alternating timed rounds; medians and ranges are reported.")
flags.DEFINE_integer("steps", 3, "Steps per timed round of each variant.")
FLAGS = flags.FLAGS


def _compiled(config, context, per_call):
  """The model and a function running `per_call` compiled steps, traced under `context`."""
  with context:
    model = METHODS[config.method].create(config)
    model.build_optimizers()
    step = tf.Variable(0, dtype=tf.int64)
    shape = (model.batches_per_step, config.batch_size, config.image_size, config.image_size,
             config.channels)
    images = tf.random.stateless_uniform(shape, [0, 0], -1.0, 1.0)
    iterator = iter(tf.data.Dataset.from_tensors(images).repeat())
    run_steps = loop.compile_train_steps(tf.distribute.get_strategy(), model, step,
                                         jit_compile=config.jit_compile)
    run = lambda: run_steps(iterator, tf.constant(per_call))
    float(next(iter(run().values())))  # trace and warm up
  return model, run


def _max_relative_difference(baseline, changed, config):
  for a, b in zip(baseline.variables, changed.variables):
    b.assign(a)
  images = tf.random.stateless_uniform(
      (8, config.image_size, config.image_size, config.channels), [1, 0], -1.0, 1.0)
  codes = tf.random.stateless_normal((8, config.latent_dim), [2, 0])
  worst = 0.0
  for network in ("encoder", "generator"):
    inputs = images if network == "encoder" else codes
    expected = getattr(baseline, network)(inputs, training=False)
    actual = getattr(changed, network)(inputs, training=False)
    worst = max(worst, float(tf.reduce_max(tf.abs(expected - actual))
                             / tf.reduce_max(tf.abs(expected))))
  return worst


def main(argv):
  del argv
  config = config_lib.from_flags()
  per_call = min(config.steps_per_loop, FLAGS.steps)
  calls = max(FLAGS.steps // per_call, 1)
  baseline_label, change_label, variant = CHANGES[FLAGS.change]
  models, runs = {}, {}
  for which, label in enumerate((baseline_label, change_label)):
    models[label], runs[label] = _compiled(*variant(config, bool(which)), per_call)
  seconds = {label: [] for label in runs}
  for _ in range(FLAGS.rounds):
    for label, run in runs.items():
      began = time.perf_counter()
      for _ in range(calls):
        outputs = run()
      float(next(iter(outputs.values())))
      seconds[label].append((time.perf_counter() - began) / (calls * per_call))
  difference = _max_relative_difference(models[baseline_label], models[change_label], config)
  medians = {label: float(np.median(s)) for label, s in seconds.items()}
  print(f"{FLAGS.change}: {config.method} {config.dataset} {config.image_size}x"
        f"{config.image_size}x{config.channels} batch {config.batch_size} width {config.width} "
        f"{config.mixed_precision} XLA {'on' if config.jit_compile else 'off'} transposed conv "
        f"{METHODS[config.method].transposed_conv(config)}, {FLAGS.rounds} alternating rounds "
        f"of {calls * per_call} steps:")
  for label, s in seconds.items():
    print(f"  {label:16s} {medians[label]:.3f} s/step (range {min(s):.3f}-{max(s):.3f})")
  print(f"  {baseline_label} / {change_label}: "
        f"{medians[baseline_label] / medians[change_label]:.2f}x; "
        f"outputs differ by at most {difference:.1e} (relative)")


if __name__ == "__main__":
  app.run(main)
