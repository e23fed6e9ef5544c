"""Shapes, value ranges, parameter counts and initialisation of the AGE DCGAN networks."""

import numpy as np
import pytest
import tensorflow as tf

from age_tf.networks import dcgan


def trainable_count(model):
  return sum(int(np.prod(v.shape)) for v in model.trainable_variables)


def torch_encoder_params(size, channels, latent, w=64):
  """Trainable parameters of the authors' PyTorch encoder, layer by layer (k=4 convs)."""
  widths = [w, 2 * w, 4 * w] + ([8 * w] if size == 64 else [])
  total, previous = 0, channels
  for i, width in enumerate(widths):
    total += previous * width * 16 + (2 * width if i > 0 else 0)  # no bias; BN gamma, beta
    previous = width
  return total + previous * latent * 16 + latent  # the last conv has a bias


def torch_generator_params(size, channels, latent, w=64):
  widths = [8 * w, 4 * w, 2 * w, 2 * w] if size == 32 else [8 * w, 4 * w, 2 * w, w]
  total, previous = 0, latent
  for width in widths:
    total += previous * width * 16 + 2 * width  # convT without bias, BN gamma and beta
    previous = width
  if size == 32:
    return total + previous * channels + channels  # 1x1 conv with bias
  return total + previous * channels * 16  # convT 4x4/2, no bias


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_ranges_and_sphere(size, channels):
  latent = 16
  encoder = dcgan.build_encoder(size, channels, latent, width=16)
  generator = dcgan.build_generator(size, channels, latent, width=16)
  x = tf.random.uniform([5, size, size, channels], -1.0, 1.0)
  codes = encoder(x, training=True)
  assert codes.shape == (5, latent)
  np.testing.assert_allclose(np.linalg.norm(codes, axis=1), 1.0, rtol=1e-5)
  z = tf.random.normal([5, latent]) * 10.0  # large inputs saturate tanh, never exceed it
  images = generator(z, training=False)
  assert images.shape == (5, size, size, channels)
  assert float(tf.reduce_min(images)) >= -1.0 and float(tf.reduce_max(images)) <= 1.0


def test_gaussian_prior_encoder_is_not_normalised():
  encoder = dcgan.build_encoder(32, 3, 8, sphere=False, width=8)
  codes = encoder(tf.random.uniform([4, 32, 32, 3], -1, 1), training=False)
  assert not np.allclose(np.linalg.norm(codes, axis=1), 1.0)


@pytest.mark.parametrize("size,channels,latent", [(32, 3, 128), (32, 1, 10), (64, 3, 64)])
def test_parameter_counts_match_the_authors_networks(size, channels, latent):
  encoder = dcgan.build_encoder(size, channels, latent)
  generator = dcgan.build_generator(size, channels, latent)
  assert trainable_count(encoder) == torch_encoder_params(size, channels, latent)
  assert trainable_count(generator) == torch_generator_params(size, channels, latent)


def test_cifar10_parameter_counts_from_reference():
  # The authors' CIFAR-10 networks: encoder 1,183,616 and generator 3,934,595 parameters.
  assert trainable_count(dcgan.build_encoder(32, 3, 128)) == 1_183_616
  assert trainable_count(dcgan.build_generator(32, 3, 128)) == 3_934_595


def test_dcgan_initialisation_and_batchnorm_settings():
  generator = dcgan.build_generator(32, 3, 128)
  kernels = [l.kernel.numpy() for l in generator.layers if hasattr(l, "kernel")]
  big = np.concatenate([k.ravel() for k in kernels])
  assert abs(big.std() - 0.02) < 0.001 and abs(big.mean()) < 0.001
  norms = [l for l in generator.layers if isinstance(l, tf.keras.layers.BatchNormalization)]
  assert len(norms) == 4
  gammas = np.concatenate([l.gamma.numpy() for l in norms])
  assert abs(gammas.mean() - 1.0) < 0.005 and 0.015 < gammas.std() < 0.025
  for layer in norms:
    assert layer.momentum == pytest.approx(0.9) and layer.epsilon == pytest.approx(1e-5)


@pytest.mark.parametrize("size", [32, 64])
def test_output_biases_keep_pytorchs_default_initialisation(size):
  # The authors' weights_init redraws kernels and BatchNorm only: a conv bias keeps
  # PyTorch's uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in channels x kernel taps.
  encoder = dcgan.build_encoder(size, 3, 512, width=16)
  bias = encoder.get_layer("conv_out").bias.numpy()
  bound = 1.0 / np.sqrt((16 * (8 if size == 64 else 4)) * 16)
  assert np.abs(bias).max() <= bound and np.abs(bias).max() > 0.9 * bound
  assert abs(bias.std() - bound / np.sqrt(3.0)) < 0.1 * bound  # uniform, not normal or zero
  if size == 32:  # the 1x1 output conv from 2w channels; 64x64 ends in a bias-free convT
    generator = dcgan.build_generator(32, 3, 8, width=16)
    bias = generator.get_layer("conv_out").bias.numpy()
    assert np.abs(bias).max() <= 1.0 / np.sqrt(32) and np.abs(bias).max() > 0


def test_generator_output_layer_spatial_sizes():
  """32x32: 1-4-8-16-32; 64x64: 1-4-8-16-32-64 (the 'same' k4 s2 layers double)."""
  for size, expected in ((32, [4, 8, 16, 32]), (64, [4, 8, 16, 32, 64])):
    generator = dcgan.build_generator(size, 3, 8, width=8)
    spatial = [l.output.shape[1] for l in generator.layers
               if l.__class__.__name__ == "Conv2DTranspose"]
    assert spatial == expected


def test_unsupported_size_is_refused():
  with pytest.raises(ValueError, match="image_size=32 or --image_size=64"):
    dcgan.build_encoder(48, 3, 8)
