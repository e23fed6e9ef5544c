"""The ALI/GALI family: tuple classes as the authors' scripts build them, objectives against numpy, phases."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import features
from age_tf import loop
from age_tf import masks as masks_lib
from age_tf.methods import METHODS
from age_tf.methods import gali
from age_tf.networks import spectral_norm

from conftest import changed, snapshot

SIZE, LATENT = 32, 4
PIXELS = SIZE * SIZE


# --------------------------------------------------------------- stand-ins
# Real Keras layers with fixed weights, so each tensor's origin can be read
# off its values: E(x) = mean(x) + 1 in every code dimension, G(z) = an image
# of mean(z) + 10, M(x) = mean(x) + 100.


def _dense(units, kernel, bias):
  return keras.layers.Dense(units, kernel_initializer=keras.initializers.Constant(kernel),
                            bias_initializer=keras.initializers.Constant(bias))


def standin_encoder(stochastic):
  images = keras.Input((SIZE, SIZE, 1))
  flat = keras.layers.Flatten()(images)
  outputs = _dense(LATENT, 1.0 / PIXELS, 1.0)(flat)
  if stochastic:  # log sigma = -30: the sampled code is the mean up to 1e-13
    outputs = keras.layers.Concatenate()([outputs, _dense(LATENT, 0.0, -30.0)(flat)])
  return keras.Model(images, outputs)


def standin_generator():
  codes = keras.Input((LATENT,))
  flat = _dense(PIXELS, 1.0 / LATENT, 10.0)(codes)
  return keras.Model(codes, keras.layers.Reshape((SIZE, SIZE, 1))(flat))


def standin_features():
  images = keras.Input((SIZE, SIZE, 1))
  return keras.Model(images, _dense(3, 1.0 / PIXELS, 100.0)(keras.layers.Flatten()(images)))


def resolve(method, **overrides):
  values = dict(method=method, dataset="digits", latent_dim=LATENT, width=4, batch_size=8,
                seed=3)
  if method == "gali_pt":
    values["feature_model"] = "inception"  # not loaded by the stand-in models
  values.update(overrides)
  return config_lib.resolve(values)


def standin_model(method, **overrides):
  cls = METHODS[method]
  return cls(resolve(method, **overrides), standin_encoder(cls.stochastic_encoder),
             standin_generator(), discriminator=None, feature_model=standin_features())


def real_images(batch=5):
  """Constant images of distinct values a, so E(x) = a + 1 and G(E(x)) = a + 11."""
  levels = np.linspace(-0.8, 0.8, batch, dtype=np.float32)
  return tf.constant(np.ones((batch, SIZE, SIZE, 1), np.float32) * levels[:, None, None, None])


def level(tensor):
  """The per-sample value of a constant image, code or feature vector."""
  flat = tf.reshape(tensor, [tensor.shape[0], -1]).numpy()
  np.testing.assert_allclose(flat, flat[:, :1].repeat(flat.shape[1], 1), atol=1e-5)
  return flat[:, 0]


def close(tensor, expected):
  np.testing.assert_allclose(level(tensor), expected, atol=1e-4)


# --------------------------------------------------------------- tuples


def test_ali_bigan_alice_tuples():
  for method in ("ali", "bigan", "alice"):
    model = standin_model(method)
    x = real_images()
    a = level(x)
    (x0, e), (f, z) = model.tuples(x)
    close(x0, a)
    close(e, a + 1)
    np.testing.assert_allclose(level(f), z.numpy().mean(1) + 10, atol=1e-4)
    assert z.shape == (5, LATENT)


def test_gali4_tuples_follow_both_chains():
  model = standin_model("gali4")
  x = real_images()
  a = level(x)
  classes = model.tuples(x)
  assert len(classes) == len(model.class_names) == 4
  (x0, e), (x1, eger), (f, z), (fr, z3) = classes
  close(x0, a), close(e, a + 1)                        # (x, E(x))
  close(x1, a), close(eger, a + 12)                    # (x, E(G(E(x))))
  m = z.numpy().mean(1)
  close(f, m + 10)                                     # (G(z), z)
  close(fr, m + 21)                                    # (G(E(G(z))), z)
  np.testing.assert_array_equal(z3.numpy(), z.numpy())


def test_gali8_tuples_are_the_eight_orderings():
  model = standin_model("gali8")
  x = real_images()
  a = level(x)
  classes = model.tuples(x)
  z = classes[4][1].numpy()
  m = z.mean(1)
  # Real chain x, e, x', e'; fake chain f, z -> ef, f'.
  values = {"x": a, "e": a + 1, "xr": a + 11, "er": a + 12,
            "f": m + 10, "ef": m + 11, "fr": m + 21}
  expected = [("x", "e", "xr", "er"), ("x", "er", "xr", "e"), ("xr", "e", "x", "er"),
              ("xr", "er", "x", "e"), ("f", "z", "fr", "ef"), ("f", "ef", "fr", "z"),
              ("fr", "z", "f", "ef"), ("fr", "ef", "f", "z")]
  assert len(classes) == 8
  for got, names in zip(classes, expected):
    for tensor, name in zip(got, names):
      if name == "z":
        np.testing.assert_array_equal(tensor.numpy(), z)
      else:
        close(tensor, values[name])


def test_gali_pt_adds_features_of_each_tuples_image():
  model = standin_model("gali_pt")
  x = real_images()
  a = level(x)
  (x0, e, y0), (x1, eger, y1), (f, z, y2), (fr, _, y3) = model.tuples(x)
  close(y0, a + 100)                        # M(x)
  close(y1, a + 111)                        # M(G(E(x))): the reconstruction's features
  m = z.numpy().mean(1)
  close(y2, m + 110)                        # M(G(z))
  close(y3, m + 110)                        # M(G(z)) for G(E(G(z))) too (authors and paper)
  close(eger, a + 12), close(fr, m + 21)


def test_gali_mix_tuples_share_codes_and_mix_images():
  model = standin_model("gali_mix")
  x = tf.random.stateless_uniform([6, SIZE, SIZE, 1], [1, 2], -1.0, 1.0)
  classes = model.tuples(x)
  assert len(classes) == 8
  (x0, z1), (x1, z2), (r, z3), (mix, z1b), (f, z), (gzf, zb), (mix2, z2b), (x7, z3b) = classes
  for image in (x0, x1, x7):
    np.testing.assert_array_equal(image.numpy(), x.numpy())
  np.testing.assert_array_equal(z1.numpy(), z1b.numpy())
  np.testing.assert_array_equal(z2.numpy(), z2b.numpy())
  np.testing.assert_array_equal(z3.numpy(), z3b.numpy())
  np.testing.assert_array_equal(mix.numpy(), mix2.numpy())
  np.testing.assert_array_equal(z.numpy(), zb.numpy())
  np.testing.assert_allclose(r.numpy(), model.generator(z1).numpy(), atol=1e-5)  # r = G(z1)
  close(f, z.numpy().mean(1) + 10)
  # The encoder saw masked images: E(mask(x)) differs from E(x) when the mask is not empty.
  unmasked = model.sample_codes(x).numpy()
  # mix is x outside one rectangle and r inside it.
  from_r = np.isclose(mix.numpy(), r.numpy(), atol=1e-6) & ~np.isclose(x.numpy(), r.numpy())
  from_x = np.isclose(mix.numpy(), x.numpy())
  assert (from_r | from_x).all()
  for i in range(6):
    rows, cols = np.nonzero(from_r[i, :, :, 0])
    if rows.size:
      box = from_r[i, rows.min():rows.max() + 1, cols.min():cols.max() + 1, 0]
      assert box.all() and rows.size == box.size
      assert not np.allclose(z1.numpy()[i], unmasked[i])
  # G(zf) with zf = E(mask(G(z))): G(z) has level m + 10 and the fill is -2, so the masked
  # image's mean lies in [-2, m + 10], zf in [-1, m + 11] and G(zf) in [9, m + 21].
  assert model.config.mask_fill == -2.0  # the authors' fill, outside the image range
  m = z.numpy().mean(1)
  assert (level(gzf) >= 9 - 1e-4).all() and (level(gzf) <= m + 21 + 1e-4).all()


@pytest.mark.parametrize("sampler", ["uniform", "authors"])
def test_mask_sizes_and_positions_are_uniform(sampler):
  rng = tf.random.Generator.from_seed(0)
  masks = masks_lib.sample(rng, 4000, 32, 16, sampler).numpy()[..., 0]
  heights, widths = masks.max(2).sum(1), masks.max(1).sum(1)
  assert set(np.unique(heights)) <= set(range(17))
  if sampler == "uniform":
    # Height and width uniform in 0..16: a mask is empty when either is 0 (1 - (16/17)^2 of
    # them), otherwise both are uniform in 1..16 (mean 8.5); every mask a full rectangle.
    full = masks.sum((1, 2)) > 0
    assert abs((~full).mean() - (1 - (16 / 17) ** 2)) < 0.02
    assert abs(heights[full].mean() - 8.5) < 0.3 and abs(widths[full].mean() - 8.5) < 0.3
    np.testing.assert_array_equal(masks.sum((1, 2)), heights * widths)
    left = np.where(widths > 0, masks.max(1).argmax(1), 0)
    # Placed uniformly so it fits: a 16-wide box's left edge spans 0..16.
    assert left[widths == 16].max() <= 16
  else:
    # The authors' horizontal range uses the height: boxes wider than tall can overrun the
    # right edge and get clipped. With 16 x 16 images and boxes up to 16 the clipped mean
    # width of non-empty masks drops from 8.5 to about 7.5.
    masks = masks_lib.sample(rng, 4000, 16, 16, sampler).numpy()[..., 0]
    full = masks.sum((1, 2)) > 0
    assert masks.max(1).sum(1)[full].mean() < 8.0 < masks.max(2).sum(1)[full].mean()


def test_central_masks():
  masks = masks_lib.sample(tf.random.Generator.from_seed(0), 2, 32, 10, "central").numpy()
  assert masks.sum() == 2 * 100 and masks[0, 11:21, 11:21].all()


# --------------------------------------------------------------- objectives


def _np_log_probs(logits):
  if logits.shape[1] == 1:
    p = 1.0 / (1.0 + np.exp(-logits[:, 0]))
    return np.log(np.stack([p, 1.0 - p], axis=1))
  shifted = logits - logits.max(1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


@pytest.mark.parametrize("num_logits,num_classes", [(1, 2), (4, 4), (8, 8)])
def test_objectives_against_numpy(num_logits, num_classes):
  rng = np.random.default_rng(num_classes)
  logits = [rng.normal(scale=2.0, size=(7, num_logits)) for _ in range(num_classes)]
  lp = [_np_log_probs(l) for l in logits]
  ours = [gali.class_log_probs(tf.constant(l, tf.float32)) for l in logits]
  for a, b in zip(ours, lp):
    np.testing.assert_allclose(a.numpy(), b, atol=1e-5)
  k = num_classes
  # Discriminator: K-way cross-entropy, m = K terms, weight 2/K.
  d = 2.0 / k * sum(-lp[i][:, i].mean() for i in range(k))
  # Product of terms: every wrong class of every class, m = K(K - 1) terms.
  product = 2.0 / (k * (k - 1)) * sum(-lp[i][:, j].mean() for i in range(k) for j in range(k)
                                      if j != i)
  minimax = -d
  misclassification = 2.0 / k * sum(-np.log(1.0 - np.exp(lp[i][:, i])).mean() for i in range(k))
  np.testing.assert_allclose(gali.discriminator_loss(ours).numpy(), d, rtol=1e-5)
  for objective, expected in [("product", product), ("minimax", minimax),
                              ("misclassification", misclassification)]:
    np.testing.assert_allclose(gali.generator_encoder_loss(ours, objective).numpy(), expected,
                               rtol=1e-5, err_msg=objective)


def test_ali_objectives_are_the_binary_cross_entropies():
  real, fake = np.array([[1.5], [-0.3]]), np.array([[0.2], [-2.0]])
  sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))
  lp = [gali.class_log_probs(tf.constant(v, tf.float32)) for v in (real, fake)]
  # Weight 2/2 = 1: D minimises -log D(x, E(x)) - log(1 - D(G(z), z)); G-E swaps the labels.
  d = -np.log(sigmoid(real)).mean() - np.log(1 - sigmoid(fake)).mean()
  ge = -np.log(1 - sigmoid(real)).mean() - np.log(sigmoid(fake)).mean()
  np.testing.assert_allclose(gali.discriminator_loss(lp).numpy(), d, rtol=1e-5)
  np.testing.assert_allclose(gali.generator_encoder_loss(lp, "product").numpy(), ge, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["linear", "exponential"])
def test_instance_noise_decays_per_epoch(schedule):
  model = standin_model("gali4", noise_schedule=schedule, batch_size=64, train_steps=230)
  assert model.config.steps_per_epoch == 23  # 10 epochs
  stds = []
  for step in (0, 22, 23, 229):
    model.generator_encoder_optimizer.iterations.assign(step)
    stds.append(float(model.noise_std()))
  # Epochs count from 1 (the authors' loop): epoch e of N = 10 has 0.1 * (N - e) / N,
  # 0.09 in the first and exactly 0 in the last.
  if schedule == "linear":
    assert stds[0] == stds[1] == pytest.approx(0.09)  # constant within an epoch
    assert stds[2] == pytest.approx(0.08) and stds[3] == 0.0
  else:
    assert stds[0] == stds[1] == pytest.approx(0.1 * 0.01 ** 0.1)
    assert stds[2] == pytest.approx(0.1 * 0.01 ** 0.2) and stds[3] == pytest.approx(0.001)


# --------------------------------------------------------------- real networks


def make_model(method, tmp_path=None, **overrides):
  if method == "gali_pt":
    classifier = features.build_classifier(SIZE, 1, 10, feature_dim=12)
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    overrides["feature_model"] = path
  model = METHODS[method].create(resolve(method, latent_dim=8, **overrides))
  model.build_optimizers()
  return model


@pytest.mark.parametrize("method,logits", [("ali", 1), ("bigan", 1), ("alice", 1), ("gali4", 4),
                                           ("gali8", 8), ("gali_pt", 4), ("gali_mix", 8)])
def test_discriminator_is_spectrally_normalised_with_a_logit_per_class(method, logits, tmp_path):
  model = make_model(method, tmp_path)
  layers = [l for l in model.discriminator._flatten_layers(include_self=False)
            if isinstance(l, (keras.layers.Dense, keras.layers.Conv2D, spectral_norm.SNDense,
                              spectral_norm.SNConv2D))]
  assert layers and all(isinstance(l, (spectral_norm.SNDense, spectral_norm.SNConv2D))
                        for l in layers)
  x = real_images(3)
  tuples = model.tuples(x)
  log_probs = model.discriminate(tuples, 0.1)
  assert len(log_probs) == len(model.class_names)
  assert model.discriminator.output.shape[-1] == logits
  assert all(lp.shape == (3, max(logits, 2)) for lp in log_probs)


def _groups(model):
  groups = {"encoder": model.encoder.trainable_variables,
            "generator": model.generator.trainable_variables,
            "discriminator": model.discriminator.trainable_variables}
  if model.feature_model is not None:
    groups["feature_model"] = model.feature_model.variables
  return groups


def test_alternating_phases_update_only_their_networks():
  model = make_model("ali", d_steps=2, simultaneous_updates=False)
  groups = _groups(model)
  before = {k: snapshot(v) for k, v in groups.items()}
  model.discriminator_step(real_images(8), 0.1)
  assert all(changed(before["discriminator"], groups["discriminator"]))
  assert not any(changed(before["encoder"], groups["encoder"]))
  assert not any(changed(before["generator"], groups["generator"]))
  before = {k: snapshot(v) for k, v in groups.items()}
  model.generator_encoder_step(real_images(8), 0.1)
  assert not any(changed(before["discriminator"], groups["discriminator"]))
  assert all(changed(before["encoder"], groups["encoder"]))
  assert all(changed(before["generator"], groups["generator"]))
  assert int(model.discriminator_optimizer.iterations) == 1
  assert int(model.generator_encoder_optimizer.iterations) == 1


@pytest.mark.parametrize("method", list(gali.METHODS))
def test_one_train_step_updates_every_network_but_the_feature_model(method, tmp_path):
  model = make_model(method, tmp_path)
  groups = _groups(model)
  before = {k: snapshot(v) for k, v in groups.items()}
  batches = tf.stack([real_images(8)] * model.batches_per_step)
  metrics = tf.function(model.train_step, autograph=False)(batches)
  assert set(metrics) == set(model.metric_names)
  for name in ("encoder", "generator", "discriminator"):
    # Every trainable variable moves (the output bias too).
    assert all(changed(before[name], groups[name])), name
  if method == "gali_pt":
    assert not model.feature_model.trainable_variables
    assert not any(changed(before["feature_model"], groups["feature_model"]))
  rows = [[float(metrics[f"confusion/{a}/{b}"]) for b in model.class_names]
          for a in model.class_names]
  np.testing.assert_allclose(np.sum(rows, axis=1), 1.0, atol=1e-6)
  assert float(metrics["discriminator/accuracy"]) == pytest.approx(np.trace(rows) / len(rows))


def test_five_to_one_schedule_uses_six_batches():
  model = make_model("gali8", d_steps=5, simultaneous_updates=False)
  assert model.batches_per_step == 6
  tf.function(model.train_step, autograph=False)(tf.stack([real_images(8)] * 6))
  assert int(model.discriminator_optimizer.iterations) == 5
  assert int(model.generator_encoder_optimizer.iterations) == 1


def test_output_bias_starts_at_the_mean_image():
  model = make_model("ali")
  mean = tf.random.stateless_uniform([SIZE, SIZE, 1], [0, 1], -0.9, 0.9)
  model.initialize_from_data(mean)
  bias = model.generator.get_layer("output_bias")
  np.testing.assert_allclose(np.tanh(bias.get_weights()[0]), mean.numpy(), atol=1e-5)


def test_encode_is_the_mean_and_sampling_is_stochastic():
  model = make_model("ali")
  x = real_images(4)
  mean = model.encode(x, training=True)
  assert mean.shape == (4, 8)
  a, b = model.sample_codes(x), model.sample_codes(x)
  assert not np.allclose(a.numpy(), b.numpy())
  bigan = make_model("bigan")
  np.testing.assert_allclose(bigan.sample_codes(x).numpy(), bigan.encode(x, True).numpy(),
                             atol=1e-6)


def test_training_resumes_discriminator_and_both_optimizers(tmp_path):
  values = dict(method="gali4", dataset="digits", width=4, latent_dim=8, batch_size=16,
                log_every=2, image_every=4, checkpoint_every=2, steps_per_loop=2,
                bn_statistics_images=128, model_dir=str(tmp_path))
  loop.train(config_lib.resolve(dict(values, train_steps=2)))
  _, first, step = checkpointing.load_model(str(tmp_path))
  assert step == 2
  # The output bias was initialised from the first batch's mean image before step 1.
  assert np.abs(first.generator.get_layer("output_bias").get_weights()[0]).max() > 0.1
  loop.train(config_lib.resolve(dict(values, train_steps=4)))
  _, second, step = checkpointing.load_model(str(tmp_path))
  assert step == 4
  assert int(second.discriminator_optimizer.iterations) == 4
  assert int(second.generator_encoder_optimizer.iterations) == 4
  assert not np.array_equal(first.discriminator.trainable_variables[0].numpy(),
                            second.discriminator.trainable_variables[0].numpy())
