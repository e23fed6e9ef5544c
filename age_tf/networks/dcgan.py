"""DCGAN-style AGE encoder and generator for 32x32 and 64x64 images (Ulyanov et al.)."""

import keras
import tensorflow as tf

from age_tf.networks import batch_norm
from age_tf.networks import subpixel

SUPPORTED_IMAGE_SIZES = (32, 64)
LEAKY_SLOPE = 0.2


def _weights():
  return keras.initializers.RandomNormal(mean=0.0, stddev=0.02)


def _batch_norm(name, synchronized):
  # PyTorch BatchNorm2d(momentum=0.1, eps=1e-5) in Keras terms; DCGAN's
  # weights_init draws gamma from N(1, 0.02).
  return batch_norm.BatchNormalization(
      momentum=0.9, epsilon=1e-5,
      gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02),
      synchronized=synchronized, name=name)


def project_to_sphere(codes):
  """Per-sample L2 normalisation onto the unit sphere (keepdims)."""
  return tf.math.l2_normalize(codes, axis=-1)


class SphereProjection(keras.layers.Layer):
  """Projects each code onto the unit sphere."""

  def call(self, inputs):
    return project_to_sphere(inputs)


def torch_default_bias(fan_in):
  """PyTorch's default bias initialisation: uniform in +-1/sqrt(fan_in).

  The authors' weights_init redraws only the kernels and BatchNorm's
  parameters, so the biases of their output convolutions keep this draw;
  fan_in is the layer's input channels times its kernel taps.
  """
  bound = 1.0 / fan_in ** 0.5
  return keras.initializers.RandomUniform(-bound, bound)


def _conv(filters, kernel, stride, padding, use_bias, name, algorithm, fan_in=None):
  return subpixel.Conv2D(
      filters, kernel, strides=stride, padding=padding, use_bias=use_bias,
      kernel_initializer=_weights(),
      bias_initializer=torch_default_bias(fan_in) if use_bias else "zeros", name=name,
      algorithm=algorithm)


def _deconv(filters, kernel, stride, padding, name, algorithm):
  return subpixel.Conv2DTranspose(
      filters, kernel, strides=stride, padding=padding, use_bias=False,
      kernel_initializer=_weights(), name=name, algorithm=algorithm)


def build_encoder(image_size, channels, latent_dim, sphere=True, width=64,
                  synchronized_bn=False, transposed_conv="auto", name="encoder"):
  """The AGE encoder e(x): images in [-1, 1] -> (batch, latent_dim) codes.

  32x32: conv 4x4/2 (w, no BN) - 2w - 4w (BN) - conv 4x4/2 to latent_dim
  (bias, PyTorch's default initialisation as in the authors' code) - 2x2
  average pool. 64x64: conv 4x4/2 (w, no BN) - 2w - 4w - 8w (BN)
  - conv 4x4/1 valid to latent_dim. LeakyReLU(0.2) between; the output is
  projected onto the unit sphere when `sphere` (the paper's latent space).
  `transposed_conv` picks how the input gradients of the 4x4/2 convolutions
  are computed (see subpixel.py).
  """
  _check_size(image_size)
  algorithm = subpixel.resolve(transposed_conv)
  inputs = keras.Input((image_size, image_size, channels), name="images")
  widths = [width, width * 2, width * 4] + ([width * 8] if image_size == 64 else [])
  h = inputs
  for i, filters in enumerate(widths):
    h = _conv(filters, 4, 2, "same", False, f"conv{i}", algorithm)(h)
    if i > 0:
      h = _batch_norm(f"bn{i}", synchronized_bn)(h)
    h = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f"lrelu{i}")(h)
  fan_in = widths[-1] * 4 * 4
  if image_size == 32:
    h = _conv(latent_dim, 4, 2, "same", True, "conv_out", algorithm, fan_in)(h)  # 2x2
    h = keras.layers.AveragePooling2D(2, name="avg_pool")(h)
  else:
    h = _conv(latent_dim, 4, 1, "valid", True, "conv_out", algorithm, fan_in)(h)  # 1x1
  codes = keras.layers.Flatten(name="codes")(h)
  if sphere:
    codes = SphereProjection(name="sphere")(codes)
  return keras.Model(inputs, codes, name=name)


def build_generator(image_size, channels, latent_dim, width=64,
                    synchronized_bn=False, transposed_conv="auto", name="generator"):
  """The AGE generator g(z): (batch, latent_dim) -> images in [-1, 1].

  32x32: convT 4x4/1 valid (8w) - 4w - 2w - 2w (4x4/2) - 1x1 conv to
  channels (bias) - tanh. 64x64 (standard DCGAN): convT 4x4/1 valid (8w) -
  4w - 2w - w - convT 4x4/2 to channels - tanh. BatchNorm + ReLU after every
  hidden transposed convolution, which has no bias. `transposed_conv` picks
  how the 4x4/2 transposed convolutions are computed (see subpixel.py).
  """
  _check_size(image_size)
  algorithm = subpixel.resolve(transposed_conv)
  inputs = keras.Input((latent_dim,), name="codes")
  h = keras.layers.Reshape((1, 1, latent_dim), name="to_map")(inputs)
  if image_size == 32:
    widths = [width * 8, width * 4, width * 2, width * 2]
  else:
    widths = [width * 8, width * 4, width * 2, width]
  for i, filters in enumerate(widths):
    if i == 0:
      h = _deconv(filters, 4, 1, "valid", f"deconv{i}", algorithm)(h)
    else:
      h = _deconv(filters, 4, 2, "same", f"deconv{i}", algorithm)(h)
    h = _batch_norm(f"bn{i}", synchronized_bn)(h)
    h = keras.layers.ReLU(name=f"relu{i}")(h)
  if image_size == 32:
    h = _conv(channels, 1, 1, "valid", True, "conv_out", algorithm, widths[-1])(h)
  else:
    h = _deconv(channels, 4, 2, "same", "deconv_out", algorithm)(h)
  images = keras.layers.Activation("tanh", name="tanh")(h)
  return keras.Model(inputs, images, name=name)


def _check_size(image_size):
  if image_size not in SUPPORTED_IMAGE_SIZES:
    raise ValueError(
        f"The DCGAN networks support image sizes {SUPPORTED_IMAGE_SIZES}, "
        f"not {image_size}; pass --image_size=32 or --image_size=64.")
