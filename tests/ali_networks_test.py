"""Shapes, widths, initialisation, D weight sharing and spectral-norm numerics of ALI/GALI."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf.networks import ali
from age_tf.networks.spectral_norm import SNConv2D
from age_tf.networks.spectral_norm import SNDense


def all_layers(model):
  """Every layer of `model`, descending into nested models."""
  found = []
  for layer in model.layers:
    found.append(layer)
    if isinstance(layer, keras.Model):
      found.extend(all_layers(layer))
  return found


def kernel_matrix(layer):
  return np.reshape(layer.kernel.numpy(), (-1, layer.kernel.shape[-1]))


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_ranges(size, channels):
  latent = 6
  encoder = ali.build_encoder(size, channels, latent, stochastic=True, width=4)
  deterministic = ali.build_encoder(size, channels, latent, stochastic=False,
                                    width=4)
  generator = ali.build_generator(size, channels, latent, width=4)
  x = tf.random.uniform([3, size, size, channels], -1.0, 1.0)
  assert encoder(x, training=True).shape == (3, 2 * latent)
  assert deterministic(x, training=False).shape == (3, latent)
  z = tf.random.normal([3, latent])
  for training in (True, False):
    images = generator(z, training=training).numpy()
    assert images.shape == (3, size, size, channels)
    assert np.all(np.abs(images) < 1.0)
  assert generator.get_layer("output_bias").bias.shape == (size, size, channels)


@pytest.mark.parametrize("size", [32, 64])
def test_paper_widths_and_spatial_sizes(size):
  assert ali.PAPER_WIDTH == {32: 32, 64: 64}
  w = ali.PAPER_WIDTH[size]
  generator = ali.build_generator(size, 3, 256, width=w)
  encoder = ali.build_encoder(size, 3, 256, stochastic=True, width=w)
  shape = lambda model, name: tuple(model.get_layer(name).output.shape[1:])
  if size == 32:
    expected_g = {"deconv1": (4, 4, 256), "deconv2": (10, 10, 128),
                  "deconv3": (13, 13, 64), "deconv4": (28, 28, 32),
                  "deconv5": (32, 32, 32), "conv6": (32, 32, 32),
                  "conv7": (32, 32, 3)}
    expected_e = {"conv1": (28, 28, 32), "conv2": (13, 13, 64),
                  "conv3": (10, 10, 128), "conv4": (4, 4, 256),
                  "conv5": (1, 1, 512), "dense6": (512,), "dense_out": (512,)}
    hidden_bn = ["bn1", "bn2", "bn3", "bn4", "bn5", "bn6"]
  else:
    expected_g = {"deconv1": (4, 4, 512), "deconv2": (13, 13, 256),
                  "deconv3": (29, 29, 256), "deconv4": (63, 63, 128),
                  "deconv5": (64, 64, 64), "conv6": (64, 64, 3)}
    expected_e = {"conv1": (63, 63, 64), "conv2": (29, 29, 128),
                  "conv3": (13, 13, 256), "conv4": (4, 4, 256),
                  "conv5": (1, 1, 512), "dense_out": (512,)}
    hidden_bn = ["bn1", "bn2", "bn3", "bn4", "bn5"]
  if size == 32:
    assert ([generator.get_layer(f"deconv{i}").filters for i in range(1, 6)]
            == [256, 128, 64, 32, 32])
  else:
    assert ([generator.get_layer(f"deconv{i}").filters for i in range(1, 6)]
            == [512, 256, 256, 128, 64])
  for name, expected in expected_g.items():
    assert shape(generator, name) == expected, name
  for name, expected in expected_e.items():
    assert shape(encoder, name) == expected, name
  # BatchNorm after every hidden layer of G and E, none after the last.
  for name in hidden_bn:
    bn = generator.get_layer(name)
    assert bn.momentum == 0.9 and bn.epsilon == 1e-5
    encoder.get_layer(name)
  last_g = "conv7" if size == 32 else "conv6"
  assert f"bn{last_g[-1]}" not in [layer.name for layer in generator.layers]
  # No biases but the encoder's output layer (and G's per-pixel bias).
  for model in (generator, encoder):
    for layer in model.layers:
      if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
        assert layer.use_bias == (layer.name == "dense_out"), layer.name
  # Weights N(0, 0.01).
  kernel = generator.get_layer("deconv1").kernel.numpy()
  assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005
  np.testing.assert_array_equal(encoder.get_layer("dense_out").bias.numpy(), 0.0)
  # The discriminator at paper widths: D(x) ends 1x1 with 16w, D(z) 16w,
  # joint 32w.
  # The discriminator: D(x) is the encoder's convolutions (ending 1x1x512),
  # D(z) 512 (SVHN) / 1024 (CelebA), D(y) 512, joint 1024 / 2048.
  disc = ali.build_discriminator(size, 3, 256, signature=("x", "z", "y"),
                                 num_logits=4, width=w, feature_dim=20)
  d_x = disc.get_layer("d_x")
  for i in range(1, 6):
    assert (d_x.get_layer(f"conv{i}").output.shape[1:]
            == encoder.get_layer(f"conv{i}").output.shape[1:])
  assert d_x.output.shape[-1] == 512
  assert disc.get_layer("d_z").output.shape[-1] == (512 if size == 32 else 1024)
  assert disc.get_layer("d_y").output.shape[-1] == 512
  assert disc.get_layer("joint_dense1").output.shape[-1] == 32 * w
  assert disc.get_layer("joint_dense2").output.shape[-1] == 32 * w
  assert disc.output.shape[-1] == 4


def test_leaky_slopes_everywhere():
  assert ali.leaky_slope(32) == 0.01 and ali.leaky_slope(64) == 0.02
  for size in (32, 64):
    models = [ali.build_generator(size, 1, 4, width=2),
              ali.build_encoder(size, 1, 4, stochastic=True, width=2),
              ali.build_discriminator(size, 1, 4, signature=("x", "z"),
                                      num_logits=1, width=2)]
    for model in models:
      relus = [l for l in all_layers(model)
               if isinstance(l, keras.layers.LeakyReLU)]
      assert relus
      for layer in relus:
        assert layer.negative_slope == pytest.approx(ali.leaky_slope(size))


def test_unsupported_sizes_and_signatures_raise():
  with pytest.raises(ValueError):
    ali.build_generator(28, 1, 8, width=4)
  with pytest.raises(ValueError):
    ali.build_encoder(128, 3, 8, stochastic=False, width=4)
  with pytest.raises(ValueError):
    ali.build_discriminator(48, 3, 8, signature=("x", "z"), num_logits=1,
                            width=4)
  with pytest.raises(ValueError):
    ali.leaky_slope(16)
  with pytest.raises(ValueError):
    ali.build_discriminator(32, 3, 8, signature=("x", "w"), num_logits=1,
                            width=4)
  with pytest.raises(ValueError):  # "y" without feature_dim
    ali.build_discriminator(32, 3, 8, signature=("x", "z", "y"), num_logits=1,
                            width=4)


@pytest.mark.parametrize("size", [32, 64])
def test_output_bias_initialisation(size):
  generator = ali.build_generator(size, 3, 5, width=4)
  rng = np.random.default_rng(0)
  mean = rng.uniform(-0.99, 0.99, (size, size, 3)).astype(np.float32)
  ali.initialize_output_bias(generator, mean)
  layer = generator.get_layer("output_bias")
  assert isinstance(layer, ali.PixelBias)
  np.testing.assert_allclose(np.tanh(layer.bias.numpy()), mean, atol=1e-5)
  # The layer adds b to its input.
  h = rng.normal(size=(2, size, size, 3)).astype(np.float32)
  np.testing.assert_allclose(layer(h), h + layer.bias.numpy(), atol=1e-6)
  # With the pre-activation h = 0 (last conv zeroed) the generator outputs
  # the mean image.
  last = generator.get_layer("conv7" if size == 32 else "conv6")
  last.kernel.assign(tf.zeros_like(last.kernel))
  images = generator(tf.random.normal([2, 5]), training=False).numpy()
  np.testing.assert_allclose(images, np.broadcast_to(mean, images.shape),
                             atol=1e-5)
  # Extreme means are clipped rather than sent to +-infinity.
  ali.initialize_output_bias(generator, tf.ones([size, size, 3]))
  assert np.all(np.isfinite(layer.bias.numpy()))
  with pytest.raises(ValueError):
    ali.initialize_output_bias(generator, np.zeros((size, size, 1)))


@pytest.mark.parametrize("size", [32, 64])
def test_discriminator_is_spectrally_normalised_without_batch_norm(size):
  disc = ali.build_discriminator(size, 3, 8, signature=("x", "z", "y"),
                                 num_logits=4, width=4, feature_dim=12)
  layers = all_layers(disc)
  assert not any(isinstance(l, (keras.layers.BatchNormalization,
                                keras.layers.Dropout)) for l in layers)
  weighted = [l for l in layers if not isinstance(l, keras.Model) and l.weights]
  assert weighted
  for layer in weighted:
    assert isinstance(layer, (SNDense, SNConv2D)), layer.name
    assert layer.use_bias, layer.name
  assert sum(isinstance(l, SNConv2D) for l in layers) == 5
  # 2 D(z) + 2 D(y) + 2 joint + logits.
  assert sum(isinstance(l, SNDense) for l in layers) == 7
  assert isinstance(disc.get_layer("logits"), SNDense)


@pytest.mark.parametrize("size", [32, 64])
def test_discriminator_signatures_and_sharing(size):
  latent, feature_dim, batch = 5, 7, 3
  x = lambda: tf.random.uniform([batch, size, size, 1], -1.0, 1.0)
  z = lambda: tf.random.normal([batch, latent])

  pair = ali.build_discriminator(size, 1, latent, signature=("x", "z"),
                                 num_logits=1, width=4)
  assert pair([x(), z()], training=True).shape == (batch, 1)

  quad = ali.build_discriminator(size, 1, latent,
                                 signature=("x", "z", "x", "z"), num_logits=8,
                                 width=4)
  inputs = [x(), z(), x(), z()]
  logits = quad(inputs, training=False)
  assert logits.shape == (batch, 8)
  conv_kernels = lambda model: [v for l in all_layers(model)
                                if isinstance(l, SNConv2D) for v in [l.kernel]]
  assert len(conv_kernels(quad)) == len(conv_kernels(pair)) == 5
  # Same variables per tower; only the joint tower's first layer is wider.
  assert len(quad.trainable_variables) == len(pair.trainable_variables)
  assert (quad.get_layer("joint_dense1").kernel.shape[0]
          == 2 * pair.get_layer("joint_dense1").kernel.shape[0])
  # Both images and both codes reach the logits.
  for position in range(4):
    changed = list(inputs)
    changed[position] = x() if position % 2 == 0 else z()
    assert not np.allclose(quad(changed, training=False), logits)

  triple = ali.build_discriminator(size, 1, latent, signature=("x", "z", "y"),
                                   num_logits=4, width=4,
                                   feature_dim=feature_dim)
  out = triple([x(), z(), tf.random.normal([batch, feature_dim])],
               training=True)
  assert out.shape == (batch, 4)
  assert [t.shape[1:] for t in triple.inputs] == [
      (size, size, 1), (latent,), (feature_dim,)]


def test_spectral_norm_converges_to_the_largest_singular_value():
  tf.random.set_seed(1)
  conv = SNConv2D(6, 3, strides=2, padding="same",
                  kernel_initializer=keras.initializers.RandomNormal(seed=3))
  dense = SNDense(9, kernel_initializer=keras.initializers.RandomNormal(seed=4))
  x_img = tf.random.normal([2, 8, 8, 4])
  x_vec = tf.random.normal([2, 13])
  assert conv(x_img, training=True).shape == (2, 4, 4, 6)
  assert dense(x_vec, training=True).shape == (2, 9)
  assert conv.u.shape == (1, 6) and dense.u.shape == (1, 9)
  assert not conv.u.trainable
  step = tf.function(lambda: (conv(x_img, training=True),
                              dense(x_vec, training=True)))
  for _ in range(50):
    step()
  for layer in (conv, dense):
    top = np.linalg.svd(kernel_matrix(layer), compute_uv=False)[0]
    np.testing.assert_allclose(float(layer.sigma(training=False)), top,
                               rtol=1e-3)
    effective = kernel_matrix(layer) / float(layer.sigma(training=False))
    np.testing.assert_allclose(
        np.linalg.svd(effective, compute_uv=False)[0], 1.0, rtol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(layer.u.numpy()), 1.0, rtol=1e-5)


def test_spectral_norm_matches_the_explicit_formula():
  layer = SNConv2D(5, 3, padding="valid")
  x = tf.random.normal([2, 6, 6, 3])
  layer(x, training=False)  # builds
  u = layer.u.numpy()
  w = kernel_matrix(layer)
  v = u @ w.T
  v /= np.linalg.norm(v)
  u_new = v @ w
  u_new /= np.linalg.norm(u_new)
  sigma = (v @ w @ u_new.T).item()
  expected = tf.nn.conv2d(x, layer.kernel.numpy() / sigma, 1, "VALID")
  np.testing.assert_allclose(layer(x, training=True), expected, atol=1e-5)
  np.testing.assert_allclose(layer.u.numpy(), u_new, atol=1e-6)


def test_u_is_updated_only_in_training():
  layer = SNDense(4)
  x = tf.random.normal([3, 7])
  layer(x)  # training=None behaves as inference
  initial = layer.u.numpy().copy()
  np.testing.assert_allclose(np.linalg.norm(initial), 1.0, rtol=1e-5)
  layer(x, training=False)
  np.testing.assert_array_equal(layer.u.numpy(), initial)
  layer(x, training=True)
  after = layer.u.numpy()
  assert not np.allclose(after, initial)
  layer(x, training=False)
  np.testing.assert_array_equal(layer.u.numpy(), after)
  # In a model, the training flag propagates.
  disc = ali.build_discriminator(32, 1, 3, signature=("x", "z"), num_logits=1,
                                 width=2)
  logits_layer = disc.get_layer("joint_dense1")
  before = logits_layer.u.numpy().copy()
  inputs = [tf.zeros([2, 32, 32, 1]), tf.random.normal([2, 3])]
  disc(inputs, training=False)
  np.testing.assert_array_equal(logits_layer.u.numpy(), before)
  disc(inputs, training=True)
  assert not np.allclose(logits_layer.u.numpy(), before)


def test_gradients_flow_through_sigma_to_the_kernel():
  layer = SNDense(4, use_bias=True)
  x = tf.random.normal([3, 6])
  layer(x, training=False)
  u = layer.u.numpy()
  w = layer.kernel.numpy()
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(layer(x, training=True) * tf.constant([1., 2., 3., 4.]))
  grad_kernel, grad_bias = tape.gradient(loss, [layer.kernel, layer.bias])
  assert grad_kernel is not None and grad_bias is not None
  # d/dW f(W / sigma(W)) with sigma = v W u'^T, u' and v held constant.
  v = u @ w.T
  v /= np.linalg.norm(v)
  u_new = v @ w
  u_new /= np.linalg.norm(u_new)
  sigma = (v @ w @ u_new.T).item()
  upstream = x.numpy().T @ np.tile([1., 2., 3., 4.], (3, 1))  # dL/dW_hat
  expected = upstream / sigma - np.sum(upstream * w) / sigma**2 * (v.T @ u_new)
  np.testing.assert_allclose(grad_kernel, expected, rtol=1e-4, atol=1e-6)
  assert not np.allclose(grad_kernel, upstream / sigma, atol=1e-6)


def test_mixed_precision_and_config():
  dense = SNDense(3, dtype="mixed_bfloat16", name="d")
  conv = SNConv2D(2, (3, 2), strides=(1, 2), padding="valid",
                  dtype="mixed_bfloat16", use_bias=False, name="c")
  out = dense(tf.random.normal([2, 5]), training=True)
  image_out = conv(tf.random.normal([2, 6, 6, 3]), training=True)
  assert out.dtype == tf.bfloat16 and image_out.dtype == tf.bfloat16
  assert image_out.shape == (2, 4, 3, 2)
  for layer in (dense, conv):
    assert layer.kernel.dtype == "float32" and layer.u.dtype == "float32"
  assert conv.bias is None
  restored = SNConv2D.from_config(conv.get_config())
  assert (restored.filters, restored.kernel_size, restored.strides,
          restored.padding, restored.use_bias) == (2, (3, 2), (1, 2), "valid",
                                                   False)
  restored_dense = SNDense.from_config(dense.get_config())
  assert restored_dense.units == 3 and restored_dense.use_bias
