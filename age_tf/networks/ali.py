"""ALI/GALI encoder, generator and tuple discriminator for 32x32 and 64x64 images."""

import keras
import tensorflow as tf

from age_tf.networks import batch_norm
from age_tf.networks import subpixel
from age_tf.networks.spectral_norm import SNConv2D
from age_tf.networks.spectral_norm import SNDense

SUPPORTED_IMAGE_SIZES = (32, 64)
# The base width w that reproduces the paper's layer widths (SVHN, CelebA).
PAPER_WIDTH = {32: 32, 64: 64}
DISCRIMINATOR_KINDS = ("x", "z", "y")

# (filters as a multiple of w, kernel, stride) per layer; all 'valid'.
_GENERATOR_DECONVS = {
    32: [(8, 4, 1), (4, 4, 2), (2, 4, 1), (1, 4, 2), (1, 5, 1)],
    64: [(8, 4, 1), (4, 7, 2), (4, 5, 2), (2, 7, 2), (1, 2, 1)],
}
# Hidden 1x1 convolutions after the transposed ones (multiples of w).
_GENERATOR_POINTWISE = {32: [1], 64: []}
_ENCODER_CONVS = {
    32: [(1, 5, 1), (2, 4, 2), (4, 4, 1), (8, 4, 2), (16, 4, 1)],
    64: [(1, 2, 1), (2, 7, 2), (4, 5, 2), (4, 7, 2), (8, 4, 1)],
}
# Hidden dense layers of the encoder after the flatten (multiples of w).
_ENCODER_DENSE = {32: [16], 64: []}
# Discriminator towers' dense widths (multiples of w).
_D_Z_DENSE = {32: [16, 16], 64: [16, 16]}
_D_Y_DENSE = {32: [16, 16], 64: [8, 8]}
_D_JOINT_DENSE = {32: [32, 32], 64: [32, 32]}


def leaky_slope(image_size):
  """The LeakyReLU slope of the ALI networks: 0.01 (32x32) or 0.02 (64x64)."""
  _check_size(image_size)
  return 0.01 if image_size == 32 else 0.02


def _weights():
  return keras.initializers.RandomNormal(mean=0.0, stddev=0.01)


def _batch_norm(name, synchronized):
  # PyTorch BatchNorm(momentum=0.1, eps=1e-5) in Keras terms.
  return batch_norm.BatchNormalization(
      momentum=0.9, epsilon=1e-5, synchronized=synchronized, name=name)


def _lrelu(image_size, name):
  return keras.layers.LeakyReLU(leaky_slope(image_size), name=name)


def _conv_out(size, kernel, stride):
  return (size - kernel) // stride + 1


def _deconv_out(size, kernel, stride):
  return (size - 1) * stride + kernel


@keras.saving.register_keras_serializable(package="age_tf")
class PixelBias(keras.layers.Layer):
  """Adds a learned per-pixel, per-channel bias b of shape (H, W, C) (zeros at init)."""

  def build(self, input_shape):
    self.bias = self.add_weight(shape=tuple(input_shape[1:]),
                                initializer="zeros", name="bias")

  def call(self, inputs):
    return inputs + tf.cast(self.bias, inputs.dtype)

  def compute_output_shape(self, input_shape):
    return input_shape


def initialize_output_bias(generator, mean_image):
  """Sets the generator's output bias b so that tanh(b) is `mean_image`.

  The authors initialise it once from the first training batch. `mean_image`
  is an (H, W, C) array or tensor in [-1, 1]; it is clipped to
  [-1 + 1e-3, 1 - 1e-3] before atanh.
  """
  layer = generator.get_layer("output_bias")
  mean = tf.cast(tf.convert_to_tensor(mean_image), tf.float32)
  if tuple(mean.shape) != tuple(layer.bias.shape):
    raise ValueError(f"mean_image has shape {tuple(mean.shape)}; the generator "
                     f"output bias has shape {tuple(layer.bias.shape)}.")
  bias = tf.math.atanh(tf.clip_by_value(mean, -1.0 + 1e-3, 1.0 - 1e-3))
  layer.bias.assign(tf.cast(bias, layer.bias.dtype))


def build_encoder(image_size, channels, latent_dim, *, stochastic, width,
                  synchronized_bn=False, transposed_conv="auto", name="encoder"):
  """The ALI encoder: images (H, W, C) in [-1, 1] -> codes.

  32x32: conv 5/1 (w) - 4/2 (2w) - 4/1 (4w) - 4/2 (8w) - 4/1 (16w) - flatten
  - dense 16w - dense out. 64x64: conv 2/1 (w) - 7/2 (2w) - 5/2 (4w) - 7/2
  (4w) - 4/1 (8w) - flatten - dense out. Convolutions 'valid', no biases;
  BatchNorm + LeakyReLU after every hidden layer (named conv{i}/dense{i},
  bn{i}, lrelu{i}, i from 1); the output layer "dense_out" has a bias.

  `transposed_conv` picks how the convolutions' input gradients are
  computed (see subpixel.py).

  Returns:
    A keras.Model with output (B, 2 * latent_dim) = concat[mu, log_sigma]
    when `stochastic`, else (B, latent_dim).
  """
  _check_size(image_size)
  algorithm = subpixel.resolve(transposed_conv)
  inputs = keras.Input((image_size, image_size, channels), name="images")
  h, size, index = inputs, image_size, 0
  for multiple, kernel, stride in _ENCODER_CONVS[image_size]:
    index += 1
    h = subpixel.Conv2D(
        multiple * width, kernel, strides=stride, padding="valid",
        use_bias=False, kernel_initializer=_weights(), name=f"conv{index}",
        algorithm=algorithm)(h)
    h = _batch_norm(f"bn{index}", synchronized_bn)(h)
    h = _lrelu(image_size, f"lrelu{index}")(h)
    size = _conv_out(size, kernel, stride)
  if size != 1 or tuple(h.shape[1:3]) != (1, 1):
    raise AssertionError(f"encoder convolutions end at {size}x{size}, not 1x1")
  h = keras.layers.Flatten(name="flatten")(h)
  for multiple in _ENCODER_DENSE[image_size]:
    index += 1
    h = keras.layers.Dense(multiple * width, use_bias=False,
                           kernel_initializer=_weights(), name=f"dense{index}")(h)
    h = _batch_norm(f"bn{index}", synchronized_bn)(h)
    h = _lrelu(image_size, f"lrelu{index}")(h)
  outputs = keras.layers.Dense(
      2 * latent_dim if stochastic else latent_dim,
      kernel_initializer=_weights(), bias_initializer="zeros",
      name="dense_out")(h)
  return keras.Model(inputs, outputs, name=name)


def build_generator(image_size, channels, latent_dim, *, width,
                    synchronized_bn=False, transposed_conv="auto", name="generator"):
  """The ALI generator: (B, latent_dim) -> images (B, H, W, C) = tanh(h + b).

  32x32: convT 4/1 (8w) - 4/2 (4w) - 4/1 (2w) - 4/2 (w) - 5/1 (w) - conv 1x1
  (w) - conv 1x1 (C); spatial 1-4-10-13-28-32. 64x64: convT 4/1 (8w) - 7/2
  (4w) - 5/2 (4w) - 7/2 (2w) - 2/1 (w) - conv 1x1 (C); spatial 1-4-13-29-63-
  64. All 'valid', no biases; BatchNorm + LeakyReLU after all but the last.
  b is the per-pixel bias of the "output_bias" layer (see
  initialize_output_bias). `transposed_conv` picks how the transposed
  convolutions are computed (see subpixel.py).
  """
  _check_size(image_size)
  algorithm = subpixel.resolve(transposed_conv)
  inputs = keras.Input((latent_dim,), name="codes")
  h = keras.layers.Reshape((1, 1, latent_dim), name="to_map")(inputs)
  size, index = 1, 0
  for multiple, kernel, stride in _GENERATOR_DECONVS[image_size]:
    index += 1
    h = subpixel.Conv2DTranspose(
        multiple * width, kernel, strides=stride, padding="valid",
        use_bias=False, kernel_initializer=_weights(), name=f"deconv{index}",
        algorithm=algorithm)(h)
    h = _batch_norm(f"bn{index}", synchronized_bn)(h)
    h = _lrelu(image_size, f"lrelu{index}")(h)
    size = _deconv_out(size, kernel, stride)
  for multiple in _GENERATOR_POINTWISE[image_size]:
    index += 1
    h = subpixel.Conv2D(
        multiple * width, 1, padding="valid", use_bias=False,
        kernel_initializer=_weights(), name=f"conv{index}", algorithm=algorithm)(h)
    h = _batch_norm(f"bn{index}", synchronized_bn)(h)
    h = _lrelu(image_size, f"lrelu{index}")(h)
  index += 1
  h = subpixel.Conv2D(channels, 1, padding="valid", use_bias=False,
                      kernel_initializer=_weights(), name=f"conv{index}", algorithm=algorithm)(h)
  if size != image_size or tuple(h.shape[1:3]) != (image_size, image_size):
    raise AssertionError(
        f"generator ends at {size}x{size}, not {image_size}x{image_size}")
  h = PixelBias(name="output_bias")(h)
  images = keras.layers.Activation("tanh", name="tanh")(h)
  return keras.Model(inputs, images, name=name)


def build_discriminator(image_size, channels, latent_dim, *, signature,
                        num_logits, width, feature_dim=None, transposed_conv="auto",
                        name="discriminator"):
  """The spectrally normalised tuple discriminator D(x, z, ...).

  Args:
    image_size: 32 or 64.
    channels: image channels.
    latent_dim: size of z.
    signature: tuple of kinds "x" (image), "z" (latent) and "y" (pretrained
      feature vector of size `feature_dim`), e.g. ("x", "z"),
      ("x", "z", "x", "z") or ("x", "z", "y").
    num_logits: number of output logits (no activation).
    width: base width w (PAPER_WIDTH[image_size] for the paper's networks).
    feature_dim: size of y; required when "y" is in the signature.
    transposed_conv: how the image tower's input gradients (through which
      the generator learns) are computed; see subpixel.py.
    name: model name.

  Returns:
    A keras.Model taking a list of tensors in signature order (inputs named
    "{kind}{position}") and returning (B, num_logits) logits. Each kind has
    one tower, a nested model "d_x", "d_z" or "d_y" shared by every element
    of that kind; the features are concatenated in signature order into the
    joint tower. Every conv and dense layer is an SNConv2D / SNDense with a
    bias, followed by LeakyReLU except the last; no BatchNorm, no dropout.
  """
  _check_size(image_size)
  signature = tuple(signature)
  if not signature or any(kind not in DISCRIMINATOR_KINDS for kind in signature):
    raise ValueError(f"signature {signature!r}: every element must be one of "
                     f"{DISCRIMINATOR_KINDS}.")
  if "y" in signature and not feature_dim:
    raise ValueError("A signature with 'y' needs feature_dim.")
  towers = {}
  for kind in dict.fromkeys(signature):
    if kind == "x":
      towers[kind] = _image_tower(image_size, channels, width,
                                  subpixel.resolve(transposed_conv))
    elif kind == "z":
      towers[kind] = _vector_tower(image_size, latent_dim,
                                   _D_Z_DENSE[image_size], width, "d_z")
    else:
      towers[kind] = _vector_tower(image_size, feature_dim,
                                   _D_Y_DENSE[image_size], width, "d_y")
  inputs, features = [], []
  for position, kind in enumerate(signature):
    shape = {"x": (image_size, image_size, channels), "z": (latent_dim,),
             "y": (feature_dim,)}[kind]
    tensor = keras.Input(shape, name=f"{kind}{position}")
    inputs.append(tensor)
    features.append(towers[kind](tensor))
  h = (keras.layers.Concatenate(name="concat")(features) if len(features) > 1
       else features[0])
  for i, multiple in enumerate(_D_JOINT_DENSE[image_size], start=1):
    h = _sn_dense(multiple * width, f"joint_dense{i}")(h)
    h = _lrelu(image_size, f"joint_lrelu{i}")(h)
  logits = _sn_dense(num_logits, "logits")(h)
  return keras.Model(inputs, logits, name=name)


def _sn_dense(units, name):
  return SNDense(units, use_bias=True, kernel_initializer=_weights(), name=name)


def _image_tower(image_size, channels, width, algorithm):
  """D(x): the encoder's five convolutions, spectrally normalised, with biases."""
  inputs = keras.Input((image_size, image_size, channels), name="x")
  h, size = inputs, image_size
  for i, (multiple, kernel, stride) in enumerate(_ENCODER_CONVS[image_size], 1):
    h = SNConv2D(multiple * width, kernel, strides=stride, padding="valid",
                 use_bias=True, kernel_initializer=_weights(), name=f"conv{i}",
                 algorithm=algorithm)(h)
    h = _lrelu(image_size, f"lrelu{i}")(h)
    size = _conv_out(size, kernel, stride)
  if size != 1 or tuple(h.shape[1:3]) != (1, 1):
    raise AssertionError(f"D(x) convolutions end at {size}x{size}, not 1x1")
  h = keras.layers.Flatten(name="flatten")(h)
  return keras.Model(inputs, h, name="d_x")


def _vector_tower(image_size, dim, multiples, width, name):
  """D(z) / D(y): spectrally normalised dense layers, LeakyReLU after each."""
  inputs = keras.Input((dim,), name=name[-1])
  h = inputs
  for i, multiple in enumerate(multiples, 1):
    h = _sn_dense(multiple * width, f"dense{i}")(h)
    h = _lrelu(image_size, f"lrelu{i}")(h)
  return keras.Model(inputs, h, name=name)


def _check_size(image_size):
  if image_size not in SUPPORTED_IMAGE_SIZES:
    raise ValueError(
        f"The ALI networks support image sizes {SUPPORTED_IMAGE_SIZES}, "
        f"not {image_size}.")
