"""Spectrally normalised dense and conv layers as a reparametrisation (Miyato et al. 2018)."""

import keras
import tensorflow as tf

from age_tf.networks import subpixel

# Keras 3's `keras.layers.SpectralNormalization` writes W / sigma back into the
# stored kernel on every training call (a projection of the weights). These
# layers keep the raw kernel W as the trainable variable and use W / sigma(W)
# in the forward pass, with sigma differentiable through W, as PyTorch's
# `torch.nn.utils.spectral_norm` does.

_EPSILON = 1e-12  # PyTorch's spectral_norm eps.


def _unit_normal(shape, dtype=None):
  """N(0, 1) draws normalised to unit L2 norm along the last axis."""
  draws = tf.random.normal(shape, dtype=dtype or "float32")
  return tf.math.l2_normalize(draws, axis=-1, epsilon=_EPSILON)


class _SpectralNormBase(keras.layers.Layer):
  """Holds kernel, optional bias and the power-iteration vector u.

  Subclasses set `self._kernel_shape` and `self._out_units` in build() before
  calling `_build_weights`, and use `_normalized_kernel(training)` in call().
  """

  def __init__(self, use_bias=True, kernel_initializer="glorot_uniform",
               bias_initializer="zeros", **kwargs):
    super().__init__(**kwargs)
    self.use_bias = use_bias
    self.kernel_initializer = keras.initializers.get(kernel_initializer)
    self.bias_initializer = keras.initializers.get(bias_initializer)

  def _build_weights(self, kernel_shape, out_units):
    self._out_units = out_units
    # autocast=False: the power iteration always runs on the float32 kernel;
    # the normalised kernel is cast to the compute dtype explicitly.
    self.kernel = self.add_weight(
        shape=kernel_shape, initializer=self.kernel_initializer,
        autocast=False, name="kernel")
    if self.use_bias:
      self.bias = self.add_weight(
          shape=(out_units,), initializer=self.bias_initializer, name="bias")
    else:
      self.bias = None
    # Every replica computes the same update from the same (mirrored) kernel;
    # ONLY_FIRST_REPLICA lets it be assigned inside a replica context.
    self.u = self.add_weight(
        shape=(1, out_units), initializer=_unit_normal, trainable=False,
        autocast=False, aggregation="only_first_replica", name="u")

  def sigma(self, training=False):
    """The spectral-norm estimate the next call would use (updates u if training)."""
    kernel = tf.convert_to_tensor(self.kernel.value)
    matrix = tf.reshape(tf.cast(kernel, tf.float32), [-1, self._out_units])
    u = tf.cast(tf.convert_to_tensor(self.u.value), tf.float32)
    if training:
      # One power iteration; W is (fan_in, out), u is (1, out).
      v = tf.math.l2_normalize(
          tf.matmul(u, matrix, transpose_b=True), axis=-1, epsilon=_EPSILON)
      u_new = tf.math.l2_normalize(
          tf.matmul(v, matrix), axis=-1, epsilon=_EPSILON)
      v = tf.stop_gradient(v)
      u_new = tf.stop_gradient(u_new)
      self.u.assign(u_new)
    else:
      # The stored u without updating it: v = l2norm(u W^T), sigma = v W u^T.
      v = tf.stop_gradient(tf.math.l2_normalize(
          tf.matmul(u, matrix, transpose_b=True), axis=-1, epsilon=_EPSILON))
      u_new = u
    return tf.reshape(tf.matmul(tf.matmul(v, matrix), u_new, transpose_b=True), [])

  def _normalized_kernel(self, training):
    sigma = self.sigma(training=bool(training))
    kernel = tf.cast(tf.convert_to_tensor(self.kernel.value), tf.float32) / sigma
    return tf.cast(kernel, self.compute_dtype)

  def _add_bias(self, outputs):
    if self.bias is None:
      return outputs
    return outputs + tf.cast(tf.convert_to_tensor(self.bias.value), outputs.dtype)

  def get_config(self):
    config = super().get_config()
    config.update({
        "use_bias": self.use_bias,
        "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        "bias_initializer": keras.initializers.serialize(self.bias_initializer),
    })
    return config


@keras.saving.register_keras_serializable(package="age_tf")
class SNDense(_SpectralNormBase):
  """Dense layer computing inputs @ (W / sigma(W)) + b.

  Args:
    units: output width.
    use_bias: whether to add a bias.
    kernel_initializer: initializer of the raw kernel W (fan_in, units).
    bias_initializer: initializer of the bias.
    **kwargs: keras.layers.Layer arguments (name, dtype, ...).
  """

  def __init__(self, units, use_bias=True, kernel_initializer="glorot_uniform",
               bias_initializer="zeros", **kwargs):
    super().__init__(use_bias=use_bias, kernel_initializer=kernel_initializer,
                     bias_initializer=bias_initializer, **kwargs)
    self.units = int(units)

  def build(self, input_shape):
    fan_in = input_shape[-1]
    if fan_in is None:
      raise ValueError(f"{self.name}: the last input dimension must be known.")
    self._build_weights((int(fan_in), self.units), self.units)

  def call(self, inputs, training=None):
    kernel = self._normalized_kernel(training)
    return self._add_bias(keras.ops.matmul(inputs, kernel))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.units,)

  def get_config(self):
    config = super().get_config()
    config["units"] = self.units
    return config


@keras.saving.register_keras_serializable(package="age_tf")
class SNConv2D(_SpectralNormBase):
  """NHWC 2-D convolution with kernel W / sigma(W), W reshaped to (kh*kw*cin, filters).

  Args:
    filters: output channels.
    kernel_size: int or (kh, kw).
    strides: int or (sh, sw).
    padding: "valid" or "same".
    use_bias: whether to add a bias.
    kernel_initializer: initializer of the raw kernel W (kh, kw, cin, filters).
    bias_initializer: initializer of the bias.
    algorithm: "native" (tf.nn.conv2d and its registered gradient) or
      "subpixel" (the input gradient as a sub-pixel convolution; see
      subpixel.py).
    **kwargs: keras.layers.Layer arguments (name, dtype, ...).
  """

  def __init__(self, filters, kernel_size, strides=1, padding="valid",
               use_bias=True, kernel_initializer="glorot_uniform",
               bias_initializer="zeros", algorithm=subpixel.NATIVE, **kwargs):
    super().__init__(use_bias=use_bias, kernel_initializer=kernel_initializer,
                     bias_initializer=bias_initializer, **kwargs)
    self.algorithm = algorithm
    self.filters = int(filters)
    self.kernel_size = _pair(kernel_size)
    self.strides = _pair(strides)
    self.padding = padding.lower()
    if self.padding not in ("valid", "same"):
      raise ValueError(f"padding must be 'valid' or 'same', not {padding!r}.")

  def build(self, input_shape):
    channels = input_shape[-1]
    if channels is None:
      raise ValueError(f"{self.name}: the channel dimension must be known.")
    self._build_weights(self.kernel_size + (int(channels), self.filters),
                        self.filters)

  def call(self, inputs, training=None):
    kernel = self._normalized_kernel(training)
    if self.algorithm == subpixel.SUBPIXEL and subpixel.applies(inputs, self.strides):
      outputs = subpixel.conv2d(inputs, kernel, self.strides[0], self.padding.upper())
    else:
      outputs = tf.nn.conv2d(inputs, kernel, strides=(1,) + self.strides + (1,),
                             padding=self.padding.upper())
    return self._add_bias(outputs)

  def compute_output_shape(self, input_shape):
    spatial = []
    for size, kernel, stride in zip(input_shape[1:3], self.kernel_size,
                                    self.strides):
      if size is None:
        spatial.append(None)
      elif self.padding == "valid":
        spatial.append((size - kernel) // stride + 1)
      else:
        spatial.append(-(-size // stride))
    return (input_shape[0],) + tuple(spatial) + (self.filters,)

  def get_config(self):
    config = super().get_config()
    config.update({"filters": self.filters, "kernel_size": self.kernel_size,
                   "strides": self.strides, "padding": self.padding,
                   "algorithm": self.algorithm})
    return config


def _pair(value):
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f"Expected an int or a pair, got {value}.")
  return value
