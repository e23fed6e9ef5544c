"""Speed options (default strategy, XLA, mixed precision, sub-pixel convolutions) change no results."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import distribute
from age_tf import loop
from age_tf.methods import METHODS
from age_tf.methods import base
from age_tf.networks import batch_norm

from conftest import ROOT, STEADY_ADAM, read_events

SMALL = dict(dataset="digits", width=4, batch_size=16, train_steps=10, model_dir="/tmp/unused")


def build(method, **overrides):
  config = config_lib.resolve(dict(SMALL, method=method, **overrides))
  model = METHODS[method].create(config)
  model.build_optimizers()
  return model


def batch(model, seed=0):
  return tf.constant(np.random.default_rng(seed).uniform(
      -1, 1, (model.batches_per_step, 16, 32, 32, 1)), tf.float32)


def run(model, images, steps, jit_compile=False):
  """`steps` training steps of `model` on `images` by the training loop's compiled function."""
  strategy = tf.distribute.get_strategy()
  step = tf.Variable(0, dtype=tf.int64)
  if model.data_dependent_init:
    model.initialize_from_data(tf.reduce_mean(images[0], 0))
  iterator = iter(tf.data.Dataset.from_tensors(images).repeat())
  run_steps = loop.compile_train_steps(strategy, model, step, jit_compile=jit_compile)
  return run_steps(iterator, tf.constant(steps))


def state(model):
  """Everything a step reads and writes: network weights and statistics, optimizer moments."""
  return [v for item in model.checkpoint_items().values() for v in getattr(item, "variables", [])]


def compare_steps(reference, other, steps, jit_compile=False):
  """`steps` training steps of two models, each step from the reference's state.

  Before each step `other` takes every variable of `reference` (weights,
  BatchNorm statistics, optimizer moments), so each step is compared alone,
  not a trajectory that compounds the differences of earlier steps. Both
  run the training loop's compiled function, one step per call, with their
  step counters in step. Returns, for each step, the largest weight move of
  the reference, the largest difference of any variable of the two models
  after it (with the variable's path), and both models' metrics.
  """
  images = batch(reference)
  if reference.data_dependent_init:
    reference.initialize_from_data(tf.reduce_mean(images[0], 0))
  strategy = tf.distribute.get_strategy()
  iterator = iter(tf.data.Dataset.from_tensors(images).repeat())

  def compile_steps(model, **kwargs):
    step = tf.Variable(0, dtype=tf.int64)
    run_steps = loop.compile_train_steps(strategy, model, step, **kwargs)
    return lambda: run_steps(iterator, tf.constant(1))

  run_reference = compile_steps(reference)
  run_other = compile_steps(other, jit_compile=jit_compile)
  results = []
  for _ in range(steps):
    for a, b in zip(state(reference), state(other)):
      b.assign(a)
    before = [v.numpy().copy() for v in reference.trainable_variables]
    metrics = run_reference(), run_other()
    moved = max(float(np.max(np.abs(v.numpy() - b)))
                for v, b in zip(reference.trainable_variables, before))
    diff = max((float(np.max(np.abs(a.numpy() - b.numpy()))), a.path)
               for a, b in zip(reference.variables, other.variables))
    results.append((moved, diff, metrics))
  return results


def assert_same_steps(reference, other, steps=3, jit_compile=False):
  for step, (moved, (diff, path), metrics) in enumerate(
      compare_steps(reference, other, steps, jit_compile)):
    assert moved > 1e-4, step
    # Measured over 16 initial states (seeds 0-15): at most 0.3% (XLA) and
    # 1.2% (sub-pixel) of the step's largest move for AGE, 0.5% and 0.02% for
    # GALI-4.
    assert diff < 0.1 * moved, (step, moved, diff, path)
    for name in reference.metric_names:
      np.testing.assert_allclose(float(metrics[1][name]), float(metrics[0][name]),
                                 rtol=1e-3, atol=1e-4, err_msg=f"{name} at step {step}")


def test_one_device_is_the_default_strategy():
  # OneDeviceStrategy's input pipeline slowed every CPU step 1.4-2.2x.
  assert distribute.make_strategy("auto") is tf.distribute.get_strategy()
  assert distribute.make_strategy("one_device") is tf.distribute.get_strategy()


class FixedDraws(base.StepDraws):
  """Pseudo-random numbers by integer arithmetic on (step, draw index, position).

  XLA has its own generators for the stateless random ops (same keys, other
  numbers), and its own sin and exp, so comparing an XLA step with a graph
  step needs draws that both compute exactly alike.
  """

  def __init__(self, seed, step):
    super().__init__(seed, step)
    self.step = tf.cast(step, tf.int64)

  def _fixed(self, shape, low, high):
    self.index += 1
    position = tf.range(tf.reduce_prod(shape), dtype=tf.int64)
    hashed = (position * 40503 + self.index * 7919 + self.step * 104729) % 65536
    u = (tf.cast(hashed, tf.float32) + 0.5) / 65536.0
    return tf.reshape(low + (high - low) * u, shape)

  def normal(self, shape, dtype=tf.float32, batch_axis=0):
    return tf.cast(self._fixed(shape, -1.7, 1.7), dtype)

  def uniform(self, shape, dtype=tf.float32, batch_axis=0):
    return tf.cast(self._fixed(shape, 0.0, 1.0), dtype)


@pytest.mark.parametrize("method", ["age", "gali4"])
def test_an_xla_step_computes_what_the_graph_step_does(method, monkeypatch):
  monkeypatch.setattr(base, "StepDraws", FixedDraws)
  # Under XLA BatchNorm runs Keras's ops (networks/batch_norm.py); the graph
  # step here does too, so the two differ only by XLA. (Fused against Keras's
  # BatchNorm is batch_norm_test's.)
  monkeypatch.setattr(batch_norm.BatchNormalization, "fused", False)
  keras.utils.set_random_seed(0)  # initial weights among those measured (assert_same_steps)
  graph, xla = build(method, **STEADY_ADAM[method]), build(method, **STEADY_ADAM[method])
  assert_same_steps(graph, xla, jit_compile=True)


@pytest.mark.parametrize("method", ["age", "gali4"])
def test_subpixel_training_computes_what_native_training_does(method, monkeypatch):
  monkeypatch.setattr(base, "StepDraws", FixedDraws)
  keras.utils.set_random_seed(0)
  native = build(method, transposed_conv="native", **STEADY_ADAM[method])
  fast = build(method, transposed_conv="subpixel", **STEADY_ADAM[method])
  assert [v.path for v in native.variables] == [v.path for v in fast.variables]
  assert_same_steps(native, fast)


class TwoReplicas:
  num_replicas_in_sync = 2


def test_xla_refuses_a_step_over_several_replicas():
  with pytest.raises(config_lib.UserError, match="--jit_compile.*2 replicas"):
    loop.compile_train_steps(TwoReplicas(), build("age"), tf.Variable(0, dtype=tf.int64),
                             jit_compile=True)


def test_training_refuses_xla_over_several_replicas_before_writing(tmp_path):
  config = config_lib.resolve(dict(SMALL, method="age", model_dir=str(tmp_path / "run"),
                                   jit_compile=True))
  with pytest.raises(config_lib.UserError, match="--jit_compile.*2 replicas"):
    loop.train(config, strategy=TwoReplicas())
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", ["age", "gali4"])
@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_mixed_precision_computes_in_half_and_keeps_float32_state(method, precision):
  model = build(method, mixed_precision=precision)
  # The global policy is back to float32 once the networks are built.
  assert keras.config.dtype_policy().name == "float32"
  convs = [layer for layer in model.generator.layers + model.encoder.layers
           if isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose))]
  assert convs and all(layer.compute_dtype == precision for layer in convs)
  assert all(v.dtype == "float32" for v in model.variables)
  images = batch(model)
  codes = model.encode(images[0])
  assert codes.dtype == tf.float32 and model.generate(codes).dtype == tf.float32
  before = [v.numpy().copy() for v in model.trainable_variables]
  # float16's dynamic loss scale starts at 2^15 and halves on each update
  # whose gradients overflow (that update is skipped): the first few are.
  steps = 2 if precision == "bfloat16" else 12
  metrics = run(model, images, steps)
  assert all(np.isfinite(float(metrics[name])) for name in model.metric_names)
  assert int(metrics["finite_steps"]) == steps
  moved = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
  assert np.mean(moved) > 0.9
  optimizers = [opt for opt, _ in model.optimizers().values()]
  loss_scaled = [isinstance(opt, keras.optimizers.LossScaleOptimizer) for opt in optimizers]
  assert all(loss_scaled) if precision == "float16" else not any(loss_scaled)


def test_checkpoints_move_between_precisions(tmp_path):
  full = build("age")
  full_step = tf.Variable(7, dtype=tf.int64)
  path = checkpointing.make_checkpoint(full, full_step).save(str(tmp_path / "ckpt"))
  half = build("age", mixed_precision="float16")
  half_step = tf.Variable(0, dtype=tf.int64)
  checkpointing.make_checkpoint(half, half_step).restore(path).assert_existing_objects_matched()
  assert int(half_step) == 7
  for a, b in zip(full.variables, half.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_training_runs_with_xla_and_bfloat16(tmp_path):
  config = config_lib.resolve(dict(SMALL, method="age", model_dir=str(tmp_path), train_steps=4,
                                   log_every=2, image_every=4, checkpoint_every=2,
                                   steps_per_loop=2, jit_compile=True,
                                   mixed_precision="bfloat16"))
  loop.train(config)
  losses = read_events(str(tmp_path)).Tensors("encoder/loss")
  assert [e.step for e in losses] == [2, 4]
  assert all(np.isfinite(tf.make_ndarray(e.tensor_proto)) for e in losses)
  restored, _, step = checkpointing.load_model(str(tmp_path))
  assert step == 4 and restored.mixed_precision == "bfloat16" and restored.jit_compile


def test_the_flop_count_of_convolution_gradients_is_their_forward_convolution_s():
  """benchmarks/throughput.py counts each backprop op as 2 x its forward convolution's multiply-adds."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      "throughput", os.path.join(ROOT, "benchmarks", "throughput.py"))
  throughput = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(throughput)
  # (input size, kernel, stride): an ALI 'valid' layer, its last (kernel as
  # large as the map), and a 'same' DCGAN one.
  for size, kernel, stride, padding in ((13, 4, 1, "VALID"), (4, 4, 1, "VALID"),
                                        (10, 4, 2, "VALID"), (16, 4, 2, "SAME")):
    x = tf.TensorSpec([3, size, size, 5])
    w = tf.TensorSpec([kernel, kernel, 5, 7])

    @tf.function
    def gradients(x, w):
      with tf.GradientTape() as tape:
        tape.watch([x, w])
        y = tf.nn.conv2d(x, w, stride, padding)
      return tape.gradient(y, [x, w])

    graph = gradients.get_concrete_function(x, w).graph
    ops = [op for op in graph.get_operations() if op.type in throughput.CONV_BACKPROP_OPS]
    assert sorted(op.type for op in ops) == ["Conv2DBackpropFilter", "Conv2DBackpropInput"]
    out = (size - kernel) // stride + 1 if padding == "VALID" else -(-size // stride)
    forward = 2 * 3 * out * out * kernel * kernel * 5 * 7  # restated: outputs x taps x channels
    for op in ops:
      assert throughput.conv_backprop_flops(op) == forward, (size, kernel, stride, op.type)
