"""The sub-pixel layers compute what Keras's native layers compute: outputs and all gradients."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf.networks import subpixel

# (kernel, stride, padding, input size): the DCGAN (4/2 same, 4/1 valid on
# 1x1) and ALI (valid 2..7, strides 1 and 2) layers, and odd sizes for 'same'.
TRANSPOSED = [(4, 2, "same", 4), (4, 2, "same", 8), (4, 1, "valid", 1), (4, 2, "valid", 1),
              (4, 2, "valid", 4), (4, 1, "valid", 10), (5, 1, "valid", 28), (7, 2, "valid", 4),
              (5, 2, "valid", 13), (2, 1, "valid", 63), (3, 2, "same", 5), (5, 3, "same", 4)]
CONVS = [(4, 2, "same", 32), (4, 2, "same", 16), (4, 2, "same", 7), (5, 1, "valid", 32),
         (4, 2, "valid", 28), (4, 1, "valid", 13), (7, 2, "valid", 63), (5, 2, "valid", 29),
         (3, 2, "same", 9), (4, 1, "valid", 4), (2, 1, "valid", 64)]


def _outputs_and_gradients(layer, x):
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = layer(x)
    # A loss whose gradient differs at every element.
    positions = tf.reshape(tf.range(tf.size(y), dtype=y.dtype), tf.shape(y))
    loss = tf.reduce_sum(tf.sin(y) * tf.cos(positions))
  return [y] + tape.gradient(loss, [x] + layer.trainable_variables)


def _pair(native, fast, input_shape, seed):
  x = tf.random.stateless_normal(input_shape, [seed, 1])
  native.build(input_shape)
  fast.build(input_shape)
  fast.set_weights([w + 0.01 * np.random.default_rng(seed).standard_normal(w.shape)
                    .astype(np.float32) for w in native.get_weights()])
  native.set_weights(fast.get_weights())
  return _outputs_and_gradients(native, x), _outputs_and_gradients(fast, x)


def _assert_close(expected, actual):
  names = ["output", "input gradient", "kernel gradient", "bias gradient"]
  for name, e, a in zip(names, expected, actual):
    e, a = np.asarray(e), np.asarray(a)
    assert e.shape == a.shape, name
    scale = max(np.abs(e).max(), 1e-6)
    assert np.abs(e - a).max() / scale < 1e-5, name


@pytest.mark.parametrize("kernel,stride,padding,size", TRANSPOSED)
def test_transposed_convolution_matches_keras(kernel, stride, padding, size):
  args = dict(filters=6, kernel_size=kernel, strides=stride, padding=padding, use_bias=True,
              bias_initializer="random_normal")
  native = keras.layers.Conv2DTranspose(**args)
  fast = subpixel.Conv2DTranspose(**args, algorithm=subpixel.SUBPIXEL)
  expected, actual = _pair(native, fast, (3, size, size + 1, 5), seed=kernel * 10 + size)
  _assert_close(expected, actual)


# Few-channel inputs (images: TF's input gradient, our filter gradient) and
# 1x1 kernels (the ALI generator's last layers: the filter gradient is a matmul).
FEW_CHANNEL_AND_POINTWISE_CONVS = [(5, 1, "valid", 32, 1), (5, 1, "valid", 32, 3),
                                   (4, 2, "same", 9, 3), (4, 2, "valid", 13, 1),
                                   (1, 1, "valid", 8, 8), (1, 1, "valid", 8, 16),
                                   (1, 2, "same", 9, 16), (1, 2, "valid", 9, 3)]


@pytest.mark.parametrize("kernel,stride,padding,size,channels",
                         [c + (subpixel.MIN_SUBPIXEL_INPUT_CHANNELS,) for c in CONVS]
                         + FEW_CHANNEL_AND_POINTWISE_CONVS)
def test_convolution_gradients_match_keras(kernel, stride, padding, size, channels):
  args = dict(filters=7, kernel_size=kernel, strides=stride, padding=padding, use_bias=True)
  native = keras.layers.Conv2D(**args)
  fast = subpixel.Conv2D(**args, algorithm=subpixel.SUBPIXEL)
  expected, actual = _pair(native, fast, (2, size, size + 2, channels), seed=kernel * 10 + size)
  _assert_close(expected, actual)


def _op_types(layer, input_shape):
  """The op types of a graph computing the layer's output and all its gradients."""
  if not layer.built:
    layer.build(input_shape)
  function = tf.function(lambda x: _outputs_and_gradients(layer, x))
  graph = function.get_concrete_function(tf.TensorSpec(input_shape)).graph
  return {op.type for op in graph.get_operations()}


def test_no_layer_computes_a_backprop_input_natively():
  for kernel, stride, padding, size in TRANSPOSED:
    layer = subpixel.Conv2DTranspose(4, kernel, stride, padding, algorithm=subpixel.SUBPIXEL)
    assert "Conv2DBackpropInput" not in _op_types(layer, (2, size, size, 3))
  for kernel, stride, padding, size in CONVS:
    layer = subpixel.Conv2D(4, kernel, stride, padding, algorithm=subpixel.SUBPIXEL)
    types = _op_types(layer, (2, size, size, subpixel.MIN_SUBPIXEL_INPUT_CHANNELS))
    covers_map = padding == "valid" and kernel == size  # one matmul (test below)
    assert ("MatMul" if covers_map else "Conv2D") in types
    assert "Conv2DBackpropInput" not in types
  native = keras.layers.Conv2DTranspose(4, 4, 2, "same")
  assert "Conv2DBackpropInput" in _op_types(native, (2, 4, 4, 3))  # the check can fail


def test_float32_filter_gradients_are_forward_convolutions_or_matmuls(monkeypatch):
  """No Conv2DBackpropFilter in float32 (subpixel.swapped_filter_gradient); 'native' has it."""
  layers = [(subpixel.Conv2DTranspose(4, k, s, p, algorithm=subpixel.SUBPIXEL), (2, n, n, 3))
            for k, s, p, n in TRANSPOSED]
  layers += [(subpixel.Conv2D(4, k, s, p, algorithm=subpixel.SUBPIXEL), (2, n, n, c))
             for k, s, p, n, c in FEW_CHANNEL_AND_POINTWISE_CONVS]
  for layer, shape in layers:
    assert "Conv2DBackpropFilter" not in _op_types(layer, shape), (layer.name, shape)
  monkeypatch.setattr(subpixel, "FILTER_GRADIENT", "native")
  for layer, shape in layers:
    if "MatMul" not in _op_types(layer, shape):  # a 1x1 map or kernel covering the map
      assert "Conv2DBackpropFilter" in _op_types(layer, shape), (layer.name, shape)


def test_swapped_filter_gradient_is_the_restated_sum():
  """dW[i, j, c, o] = sum over n, y, x of X[n, s y + i, s x + j, c] dY[n, y, x, o], in numpy."""
  rng = np.random.default_rng(7)
  for (k_rows, k_cols), stride, size in [((3, 2), 2, 9), ((5, 5), 1, 8), ((1, 1), 2, 7)]:
    x = rng.standard_normal((2, size, size + 1, 3)).astype(np.float32)
    out_rows, out_cols = (size - k_rows) // stride + 1, (size + 1 - k_cols) // stride + 1
    dy = rng.standard_normal((2, out_rows, out_cols, 4)).astype(np.float32)
    expected = np.zeros((k_rows, k_cols, 3, 4))
    for i in range(k_rows):
      for j in range(k_cols):
        rows = slice(i, i + stride * (out_rows - 1) + 1, stride)
        cols = slice(j, j + stride * (out_cols - 1) + 1, stride)
        window = x[:, rows, cols]
        expected[i, j] = np.einsum("nyxc,nyxo->co", window, dy)
    actual = subpixel.swapped_filter_gradient(tf.constant(x), (k_rows, k_cols, 3, 4),
                                              tf.constant(dy), stride).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float16])
def test_half_precision_filter_gradients_of_small_maps_are_patch_matmuls(dtype):
  """Maps of at most MAX_MATMUL_FILTER_GRADIENT_AREA outputs: one matmul, float32's values."""
  rng = np.random.default_rng(11)
  x = rng.standard_normal((3, 8, 8, 5)).astype(np.float32)  # 'same', stride 2: a 4x4 map
  dy = rng.standard_normal((3, 4, 4, 6)).astype(np.float32)
  kernel = tf.zeros((4, 4, 5, 6), dtype)
  expected = tf.raw_ops.Conv2DBackpropFilter(
      input=x, filter_sizes=[4, 4, 5, 6], out_backprop=dy, strides=[1, 2, 2, 1],
      padding="SAME").numpy()
  function = tf.function(lambda x, dy: subpixel._filter_gradient(  # pylint: disable=protected-access
      x, kernel, dy, 2, "SAME"))
  half = (tf.constant(x, dtype), tf.constant(dy, dtype))
  actual = tf.cast(function(*half), tf.float32).numpy()
  assert np.abs(actual - expected).max() < 0.05 * np.abs(expected).max()
  types = {op.type for op in function.get_concrete_function(*half).graph.get_operations()}
  assert "MatMul" in types and "Conv2DBackpropFilter" not in types


def test_native_algorithm_and_few_channels_keep_keras_ops():
  layer = subpixel.Conv2DTranspose(4, 4, 2, "same", algorithm=subpixel.NATIVE)
  assert "Conv2DBackpropInput" in _op_types(layer, (2, 4, 4, 3))
  layer = subpixel.Conv2D(4, 4, 2, "same", algorithm=subpixel.SUBPIXEL)
  assert "Conv2DBackpropInput" in _op_types(layer, (2, 8, 8, 3))  # RGB input


def test_auto_resolves_to_subpixel_without_a_gpu_and_rejects_unknown_names():
  expected = subpixel.NATIVE if tf.config.list_logical_devices("GPU") else subpixel.SUBPIXEL
  assert subpixel.resolve("auto") == expected
  assert subpixel.resolve("native") == subpixel.NATIVE
  with pytest.raises(ValueError, match="--transposed_conv must be one of"):
    subpixel.resolve("fast")


def test_spectrally_normalised_convolution_gradients_match_native():
  from age_tf.networks.spectral_norm import SNConv2D  # pylint: disable=g-import-not-at-top
  shape = (2, 13, 13, subpixel.MIN_SUBPIXEL_INPUT_CHANNELS)
  native = SNConv2D(5, 4, strides=2, algorithm=subpixel.NATIVE)
  fast = SNConv2D(5, 4, strides=2, algorithm=subpixel.SUBPIXEL)
  expected, actual = _pair(native, fast, shape, seed=3)
  _assert_close(expected, actual)
  assert "Conv2DBackpropInput" not in _op_types(fast, shape)
  assert "Conv2DBackpropInput" in _op_types(native, shape)


_CONVOLUTION_OPS = {"Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter"}


@pytest.mark.parametrize("stride", [1, 2])
def test_a_kernel_covering_its_map_is_one_matmul_with_keras_outputs_and_gradients(stride):
  """The last layer of the ALI encoder and D(x): a 'valid' kernel as large as its map."""
  from age_tf.networks.spectral_norm import SNConv2D  # pylint: disable=g-import-not-at-top
  shape = (3, 4, 3, subpixel.MIN_SUBPIXEL_INPUT_CHANNELS)  # rows and columns differ
  args = dict(filters=7, kernel_size=(4, 3), strides=stride, padding="valid", use_bias=True)
  native = keras.layers.Conv2D(**args)
  fast = subpixel.Conv2D(**args, algorithm=subpixel.SUBPIXEL)
  expected, actual = _pair(native, fast, shape, seed=40 + stride)
  _assert_close(expected, actual)
  assert "MatMul" in _op_types(fast, shape) and not _op_types(fast, shape) & _CONVOLUTION_OPS
  sn_native = SNConv2D(5, (4, 3), strides=stride, algorithm=subpixel.NATIVE)
  sn_fast = SNConv2D(5, (4, 3), strides=stride, algorithm=subpixel.SUBPIXEL)
  expected, actual = _pair(sn_native, sn_fast, shape, seed=50 + stride)
  _assert_close(expected, actual)
  assert not _op_types(sn_fast, shape) & _CONVOLUTION_OPS
  assert _op_types(sn_native, shape) & _CONVOLUTION_OPS  # the check can fail


def test_auto_is_the_same_for_every_method():
  from age_tf import config as config_lib  # pylint: disable=g-import-not-at-top
  from age_tf.methods import METHODS  # pylint: disable=g-import-not-at-top
  expected = subpixel.NATIVE if tf.config.list_logical_devices("GPU") else subpixel.SUBPIXEL
  for method in ("age", "gali4", "ali"):
    config = config_lib.resolve(dict(method=method, dataset="digits", model_dir="/tmp/unused"))
    assert METHODS[method].transposed_conv(config) == expected, method
    explicit = config_lib.resolve(dict(method=method, dataset="digits", model_dir="/tmp/unused",
                                       transposed_conv="native"))
    assert METHODS[method].transposed_conv(explicit) == subpixel.NATIVE, method
