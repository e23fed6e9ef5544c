"""The fused BatchNormalization computes what Keras's does: outputs, gradients, moving statistics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf.networks import batch_norm


def _pair(shape, seed, **kwargs):
  args = dict(momentum=0.9, epsilon=1e-5,
              gamma_initializer=keras.initializers.RandomNormal(1.0, 0.3, seed=seed),
              beta_initializer=keras.initializers.RandomNormal(0.0, 0.3, seed=seed + 1), **kwargs)
  keras_layer = keras.layers.BatchNormalization(**args)
  fused = batch_norm.BatchNormalization(**args)
  keras_layer.build(shape)
  fused.build(shape)
  # Moving statistics away from their initial 0 and 1, so the update is seen.
  weights = keras_layer.get_weights()
  rng = np.random.default_rng(seed)
  weights[2] = rng.normal(0.5, 0.2, weights[2].shape).astype(np.float32)
  weights[3] = rng.uniform(0.5, 2.0, weights[3].shape).astype(np.float32)
  keras_layer.set_weights(weights)
  fused.set_weights(weights)
  return keras_layer, fused


def _train_call(layer, x, upstream):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x, training=True)
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * upstream)
  grads = tape.gradient(loss, [x] + layer.trainable_variables)
  return [tf.cast(t, tf.float32).numpy() for t in [y] + grads
          + [layer.moving_mean, layer.moving_variance]]


def _relative(expected, actual):
  return np.abs(expected - actual).max() / max(np.abs(expected).max(), 1e-12)


# Image maps (the convolutional layers) and (batch, features) (the ALI dense layers).
SHAPES = [(8, 6, 5, 7), (16, 4, 4, 32), (32, 12), (3, 1, 1, 5)]


@pytest.mark.parametrize("shape", SHAPES)
def test_training_mode_matches_keras_to_float_rounding(shape):
  keras_layer, fused = _pair(shape, seed=len(shape) + shape[-1])
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(2.0, 3.0, shape), tf.float32)
  upstream = tf.constant(rng.normal(0.0, 1.0, shape), tf.float32)
  initial_mean, initial_variance = keras_layer.get_weights()[2:]
  expected, actual = _train_call(keras_layer, x, upstream), _train_call(fused, x, upstream)
  names = ["output", "input gradient", "gamma gradient", "beta gradient", "moving mean",
           "moving variance"]
  for name, e, a in zip(names, expected, actual):
    assert e.shape == a.shape, name
    assert _relative(e, a) < 1e-5, (name, _relative(e, a))
  # And against numpy: the moving averages take the batch mean and the biased
  # batch variance (the fused op itself returns the unbiased one).
  flat = x.numpy().reshape(-1, shape[-1]).astype(np.float64)
  np.testing.assert_allclose(actual[4], 0.9 * initial_mean + 0.1 * flat.mean(0), rtol=1e-5)
  np.testing.assert_allclose(actual[5], 0.9 * initial_variance + 0.1 * flat.var(0), rtol=1e-5)


def test_training_mode_runs_the_fused_kernel_and_inference_mode_is_keras():
  shape = (4, 8, 8, 16)
  _, fused = _pair(shape, seed=1)

  def op_types(training):
    function = tf.function(lambda x: fused(x, training=training))
    graph = function.get_concrete_function(tf.TensorSpec(shape)).graph
    return {op.type for op in graph.get_operations()}

  assert "FusedBatchNormV3" in op_types(True)
  assert "FusedBatchNormV3" not in op_types(False)
  # Under XLA, Keras's ops (XLA fuses them; its FusedBatchNormV3 is less exact).
  xla = tf.function(lambda x: fused(x, training=True), jit_compile=True)
  graph = xla.get_concrete_function(tf.TensorSpec(shape)).graph
  assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}
  x = tf.random.stateless_normal(shape, [1, 2])
  keras_layer, fused = _pair(shape, seed=2)
  np.testing.assert_allclose(fused(x, training=False), keras_layer(x, training=False),
                             rtol=1e-6, atol=1e-6)


def test_half_precision_computes_in_its_dtype_with_float32_statistics():
  shape = (16, 4, 4, 8)
  keras.config.set_dtype_policy("mixed_bfloat16")
  try:
    keras_layer, fused = _pair(shape, seed=3)
  finally:
    keras.config.set_dtype_policy("float32")
  rng = np.random.default_rng(1)
  x = tf.cast(tf.constant(rng.normal(1.0, 2.0, shape), tf.float32), tf.bfloat16)
  upstream = tf.constant(rng.normal(0.0, 1.0, shape), tf.float32)
  expected, actual = _train_call(keras_layer, x, upstream), _train_call(fused, x, upstream)
  # bfloat16 outputs round to 8 bits of mantissa; statistics stay float32.
  assert _relative(expected[0], actual[0]) < 1e-2
  assert _relative(expected[4], actual[4]) < 1e-5 and _relative(expected[5], actual[5]) < 1e-5
  assert fused(x, training=True).dtype == tf.bfloat16
  assert fused.moving_mean.dtype == tf.float32 and fused.gamma.dtype == tf.float32


def test_synchronized_statistics_keep_keras_call():
  shape = (4, 8, 8, 16)
  layer = batch_norm.BatchNormalization(synchronized=True)
  layer.build(shape)
  graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(
      tf.TensorSpec(shape)).graph
  assert "FusedBatchNormV3" not in {op.type for op in graph.get_operations()}


def test_a_keras_checkpoint_restores_into_the_fused_layer(tmp_path):
  shape = (4, 3, 3, 6)
  keras_layer, _ = _pair(shape, seed=4)
  fused = batch_norm.BatchNormalization(momentum=0.9, epsilon=1e-5)
  fused.build(shape)
  path = tf.train.Checkpoint(layer=keras_layer).write(str(tmp_path / "ckpt"))
  tf.train.Checkpoint(layer=fused).read(path).assert_consumed()
  for expected, actual in zip(keras_layer.get_weights(), fused.get_weights()):
    np.testing.assert_array_equal(expected, actual)
