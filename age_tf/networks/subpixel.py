"""Convolution layers whose transposed half runs as a sub-pixel (stride-1) convolution.

TensorFlow computes a transposed convolution (a generator's forward pass,
and every convolution's gradient with respect to its input) with
Conv2DBackpropInput, which on CPUs runs at a third to a half of the speed of
a Conv2D of the same size. A transposed convolution with stride s splits
into s x s output phases; phase (p, q) is a stride-1 convolution of the
input with the kernel taps p, p + s, p + 2s, ... (rows) and q, q + s, ...
(columns), flipped. So one stride-1 Conv2D of the input padded by L - 1
(L = ceil(k / s)) to s*s*out channels, then depth_to_space(s) and a crop
to the layer's padding, computes it exactly. A transposed 'valid' layer on
a 1x1 map (a generator's first layer), and a 'valid' convolution whose
kernel covers its whole map (an encoder's last layer), are single matmuls.

Kernel gradients (_filter_gradient) are, in float32, a forward Conv2D with
the batch and channel axes swapped (swapped_filter_gradient): TensorFlow's
CPU Conv2DBackpropFilter ran the ALI family's layers 1.1-3.8x slower
(benchmarks/filter_gradient.py).

The layers below keep Keras's kernels (same shapes, initialisers and
checkpoint keys) and change only how the transposed half and the kernel
gradient are computed; forward convolutions are TF's own Conv2D.
"""

import keras
import tensorflow as tf

NATIVE, SUBPIXEL = "native", "subpixel"
ALGORITHMS = ("auto", NATIVE, SUBPIXEL)
# Below this many input channels a Conv2D's input gradient (a stride-1
# convolution to s*s*channels) is as fast natively (RGB: 15 vs 10 ms).
MIN_SUBPIXEL_INPUT_CHANNELS = 16
# Half-precision filter gradients of layers whose output map has at most
# this many positions are one matmul (see _filter_gradient).
MAX_MATMUL_FILTER_GRADIENT_AREA = 16
# How _filter_gradient computes kernel gradients: "fast" or "native"
# (Conv2DBackpropFilter everywhere; benchmarks/ablation.py times the two).
FILTER_GRADIENT = "fast"


def resolve(algorithm):
  """'auto' -> 'subpixel' on a machine without GPUs, else 'native' (cuDNN)."""
  if algorithm not in ALGORITHMS:
    raise ValueError(f"--transposed_conv must be one of {ALGORITHMS}, not {algorithm!r}.")
  if algorithm != "auto":
    return algorithm
  return NATIVE if tf.config.list_logical_devices("GPU") else SUBPIXEL


def _taps(size, stride):
  return -(-size // stride)  # ceil


def _phase_kernel(kernel, stride):
  """(kh, kw, out, in) transposed-conv kernel -> (Lh, Lw, in, s*s*out) phase kernel.

  Channel (p * s + q) * out + o of the result holds, at (i, j), the tap
  kernel[s (Lh - 1 - i) + p, s (Lw - 1 - j) + q, o] (zero past the kernel),
  the order depth_to_space(s) reads phases in.
  """
  k_rows, k_cols, out, channels = kernel.shape
  l_rows, l_cols = _taps(k_rows, stride), _taps(k_cols, stride)
  padded = tf.pad(kernel, [[0, l_rows * stride - k_rows], [0, l_cols * stride - k_cols],
                           [0, 0], [0, 0]])
  taps = tf.reshape(padded, [l_rows, stride, l_cols, stride, out, channels])
  taps = tf.reverse(taps, axis=[0, 2])
  taps = tf.transpose(taps, [0, 2, 5, 1, 3, 4])  # (i, j, in, p, q, out)
  return tf.reshape(taps, [l_rows, l_cols, channels, stride * stride * out])


def transposed_conv(x, kernel, stride, pad_before, out_size):
  """The transposed convolution of x (B, H, W, in) by kernel (kh, kw, out, in).

  Returns rows and columns [pad_before, pad_before + out_size) of the full
  transposed output (length (H - 1) s + kh), zero past its end; e.g.
  Keras's 'valid' layer is pad_before = (0, 0), out_size = ((H - 1) s + kh, ...),
  and TF's 'same' one pad_before = (max(k - s, 0) // 2, ...), out_size = (H s, W s).
  Computed as one stride-1 Conv2D and depth_to_space; no gradient of its own
  is defined here (see conv2d_transpose and conv2d).
  """
  k_rows, k_cols = kernel.shape[0], kernel.shape[1]
  l_rows, l_cols = _taps(k_rows, stride), _taps(k_cols, stride)
  padded = tf.pad(x, [[0, 0], [l_rows - 1, l_rows - 1], [l_cols - 1, l_cols - 1], [0, 0]])
  y = tf.nn.conv2d(padded, _phase_kernel(kernel, stride), 1, "VALID")
  if stride > 1:
    y = tf.nn.depth_to_space(y, stride)
  full_rows, full_cols = y.shape[1], y.shape[2]
  rows = [pad_before[0], pad_before[0] + out_size[0]]
  cols = [pad_before[1], pad_before[1] + out_size[1]]
  y = y[:, rows[0]:min(rows[1], full_rows), cols[0]:min(cols[1], full_cols)]
  if rows[1] > full_rows or cols[1] > full_cols:  # rows no tap reaches: zero
    y = tf.pad(y, [[0, 0], [0, max(rows[1] - full_rows, 0)],
                   [0, max(cols[1] - full_cols, 0)], [0, 0]])
  return y


def dense_conv2d_transpose(x, kernel):
  """Transposed 'valid' convolution of a 1x1 map (B, 1, 1, in) as one matmul.

  y[b, i, j, o] = sum_c x[b, 0, 0, c] kernel[i, j, o, c], the (kh, kw)
  output of any stride.
  """
  k_rows, k_cols, out, channels = kernel.shape
  codes = tf.reshape(x, [-1, channels])
  weights = tf.reshape(tf.transpose(kernel, [3, 0, 1, 2]), [channels, k_rows * k_cols * out])
  return tf.reshape(tf.matmul(codes, weights), [-1, k_rows, k_cols, out])


def dense_conv2d(x, kernel):
  """A 'valid' convolution whose kernel covers the whole map (B, kh, kw, in) as one matmul.

  Its one output position is the map flattened (rows, columns, channels,
  the kernel's own order) times the kernel flattened the same way, and its
  gradients are the matmul's: the last layer of the ALI encoder and D(x)
  (a 4x4 kernel on a 4x4 map). As a convolution, TensorFlow's CPU kernels
  ran it forward and backward at batch 400 in 859 ms (sub-pixel input
  gradient) or 2565 ms (its own), against 50 ms as a matmul.
  """
  k_rows, k_cols, channels, filters = kernel.shape
  y = tf.matmul(tf.reshape(x, [-1, k_rows * k_cols * channels]),
                tf.reshape(kernel, [k_rows * k_cols * channels, filters]))
  return tf.reshape(y, [-1, 1, 1, filters])


def _same_padding(in_size, out_size, kernel, stride):
  """(before, after): the rows TF's 'same' padding adds to a conv from in_size to out_size."""
  total = max((out_size - 1) * stride + kernel - in_size, 0)
  return total // 2, total - total // 2


def swapped_filter_gradient(inputs, kernel_shape, out_backprop, stride):
  """The kernel gradient of a 'valid' tf.nn.conv2d as a forward Conv2D, batch and channels swapped.

  dW[i, j, c, o] = sum over n, y, x of X[n, s y + i, s x + j, c] dY[n, y, x, o]
  is a 'valid' convolution of X read as C images of N channels, (C, H, W, N),
  by dY read as a (Ho, Wo, N, O) kernel dilated by the stride s: its output
  (C, H - s (Ho - 1), ..., O) holds dW[i, j, c, o] at (c, i, j, o) for i < kh.
  A 1x1 kernel is one matmul.
  """
  k_rows, k_cols, channels, filters = kernel_shape
  if (k_rows, k_cols) == (1, 1):
    strided = inputs[:, ::stride, ::stride, :][:, :out_backprop.shape[1], :out_backprop.shape[2]]
    gradient = tf.matmul(tf.reshape(strided, [-1, channels]),
                         tf.reshape(out_backprop, [-1, filters]), transpose_a=True)
    return tf.reshape(gradient, kernel_shape)
  images = tf.transpose(inputs, [3, 1, 2, 0])
  dilated_kernel = tf.transpose(out_backprop, [1, 2, 0, 3])
  gradient = tf.nn.conv2d(images, dilated_kernel, 1, "VALID", dilations=stride)
  return tf.transpose(gradient[:, :k_rows, :k_cols, :], [1, 2, 0, 3])


def _filter_gradient(inputs, kernel, out_backprop, stride, padding):
  """The gradient of tf.nn.conv2d(inputs, kernel, stride, padding) with respect to kernel.

  FILTER_GRADIENT 'fast' (the default): in float32 swapped_filter_gradient;
  in bfloat16 and float16, on maps of at most MAX_MATMUL_FILTER_GRADIENT_AREA
  output positions (the deep, small layers), the patches of `inputs` times
  out_backprop as one matmul, where oneDNN's half-precision
  Conv2DBackpropFilter is slower than the matmul; elsewhere, and with
  FILTER_GRADIENT 'native', Conv2DBackpropFilter.
  """
  k_rows, k_cols, channels, filters = kernel.shape
  if FILTER_GRADIENT == "fast" and inputs.dtype == tf.float32:
    if padding == "SAME":
      rows = _same_padding(inputs.shape[1], out_backprop.shape[1], k_rows, stride)
      cols = _same_padding(inputs.shape[2], out_backprop.shape[2], k_cols, stride)
      inputs = tf.pad(inputs, [[0, 0], rows, cols, [0, 0]])
    return swapped_filter_gradient(inputs, kernel.shape, out_backprop, stride)
  small = out_backprop.shape[1] * out_backprop.shape[2] <= MAX_MATMUL_FILTER_GRADIENT_AREA
  if FILTER_GRADIENT == "native" or not small:  # float32 returned above unless native
    return tf.raw_ops.Conv2DBackpropFilter(
        input=inputs, filter_sizes=tf.shape(kernel), out_backprop=out_backprop,
        strides=[1, stride, stride, 1], padding=padding)
  patches = tf.image.extract_patches(inputs, [1, k_rows, k_cols, 1], [1, stride, stride, 1],
                                     [1, 1, 1, 1], padding)
  gradient = tf.matmul(tf.reshape(patches, [-1, k_rows * k_cols * channels]),
                       tf.reshape(out_backprop, [-1, filters]), transpose_a=True)
  return tf.reshape(gradient, [k_rows, k_cols, channels, filters])


def conv2d_transpose(x, kernel, stride, padding):
  """Keras's Conv2DTranspose (no output_padding): sub-pixel forward, TF's ops backward.

  padding: "VALID" (output (H - 1) s + kh) or "SAME" (output H s).
  """
  height, width = x.shape[1], x.shape[2]
  k_rows, k_cols = kernel.shape[0], kernel.shape[1]
  if padding == "VALID":
    pad_before = (0, 0)
    out_size = ((height - 1) * stride + k_rows, (width - 1) * stride + k_cols)
  else:
    out_size = (height * stride, width * stride)
    pad_before = (_same_padding(out_size[0], height, k_rows, stride)[0],
                  _same_padding(out_size[1], width, k_cols, stride)[0])

  @tf.custom_gradient
  def forward(x, kernel):
    def gradient(dy):
      dx = tf.nn.conv2d(dy, kernel, stride, padding)
      return dx, _filter_gradient(dy, kernel, x, stride, padding)
    return transposed_conv(x, kernel, stride, pad_before, out_size), gradient

  return forward(x, kernel)


def conv2d(x, kernel, stride, padding):
  """tf.nn.conv2d(x, kernel, stride, padding) with _filter_gradient and a sub-pixel input gradient.

  Inputs of fewer than MIN_SUBPIXEL_INPUT_CHANNELS channels keep TF's
  Conv2DBackpropInput. A 'valid' kernel as large as the map is one matmul
  (dense_conv2d).
  """
  height, width = x.shape[1], x.shape[2]
  k_rows, k_cols = kernel.shape[0], kernel.shape[1]
  if padding == "VALID" and (height, width) == (k_rows, k_cols):
    return dense_conv2d(x, kernel)

  @tf.custom_gradient
  def forward(x, kernel):
    y = tf.nn.conv2d(x, kernel, stride, padding)

    def gradient(dy):
      if padding == "VALID":
        pad_before = (0, 0)
      else:
        pad_before = (_same_padding(height, y.shape[1], k_rows, stride)[0],
                      _same_padding(width, y.shape[2], k_cols, stride)[0])
      if x.shape[-1] < MIN_SUBPIXEL_INPUT_CHANNELS:
        dx = tf.nn.conv2d_transpose(dy, kernel, tf.shape(x), stride, padding)
      else:
        dx = transposed_conv(dy, kernel, stride, pad_before, (height, width))
      return dx, _filter_gradient(x, kernel, dy, stride, padding)

    return y, gradient

  return forward(x, kernel)


def applies(inputs, strides, dilation_rate=(1, 1), data_format="channels_last", groups=1):
  """Whether the sub-pixel path covers this layer: static spatial shape, equal strides."""
  return (inputs.shape[1] is not None and inputs.shape[2] is not None
          and strides[0] == strides[1] and tuple(dilation_rate) == (1, 1)
          and data_format == "channels_last" and groups == 1)


def _finish(layer, outputs):
  if layer.use_bias:
    outputs = tf.nn.bias_add(outputs, tf.cast(layer.bias, outputs.dtype))
  if layer.activation is not None:
    outputs = layer.activation(outputs)
  return outputs


@keras.saving.register_keras_serializable(package="age_tf")
class Conv2DTranspose(keras.layers.Conv2DTranspose):
  """keras.layers.Conv2DTranspose computed as a sub-pixel convolution.

  A 'valid' layer on a 1x1 map is one matmul. algorithm='native', an
  output_padding and unequal strides use Keras's own call. The variables and
  their names are Keras's, so checkpoints move between algorithms.
  """

  def __init__(self, *args, algorithm=SUBPIXEL, **kwargs):
    super().__init__(*args, **kwargs)
    self.algorithm = algorithm

  def call(self, inputs):
    if (self.algorithm != SUBPIXEL or self.output_padding is not None
        or not applies(inputs, self.strides, self.dilation_rate, self.data_format)):
      return super().call(inputs)
    kernel = tf.cast(self.kernel, inputs.dtype)
    if self.padding == "valid" and inputs.shape[1] == inputs.shape[2] == 1:
      return _finish(self, dense_conv2d_transpose(inputs, kernel))
    return _finish(self, conv2d_transpose(inputs, kernel, self.strides[0],
                                          self.padding.upper()))

  def get_config(self):
    return {**super().get_config(), "algorithm": self.algorithm}


@keras.saving.register_keras_serializable(package="age_tf")
class Conv2D(keras.layers.Conv2D):
  """keras.layers.Conv2D with conv2d's gradients: sub-pixel for the input, swapped for the kernel.

  algorithm='native' and unequal strides use Keras's own call.
  """

  def __init__(self, *args, algorithm=SUBPIXEL, **kwargs):
    super().__init__(*args, **kwargs)
    self.algorithm = algorithm

  def call(self, inputs):
    if (self.algorithm != SUBPIXEL
        or not applies(inputs, self.strides, self.dilation_rate, self.data_format,
                       self.groups)):
      return super().call(inputs)
    kernel = tf.cast(self.kernel, inputs.dtype)
    return _finish(self, conv2d(inputs, kernel, self.strides[0], self.padding.upper()))

  def get_config(self):
    return {**super().get_config(), "algorithm": self.algorithm}
