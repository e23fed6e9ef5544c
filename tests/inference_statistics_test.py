"""The served BatchNorm statistics (age_tf/inference_statistics.py): the pass, the export, training's figures.

Tiny networks (width 4) whose moving statistics are made wrong on purpose:
the encoder's from training-mode calls on noise images, the generator's from
training-mode calls on codes far from the prior and the encodings. Inference
mode then differs from training mode by far, as in a run whose moving
averages mix statistics of other inputs (docs/inference_statistics.md).
Where reconstruction errors are compared, the AGE networks are first
trained briefly as a plain autoencoder (training mode, pixel MSE), so that
training mode reconstructs well (an untrained generator draws nearly the
same image for every code, in either mode).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import data
from age_tf import export
from age_tf import inference_statistics
from age_tf import loop
from age_tf.methods import METHODS

from conftest import read_events

IMAGES = 300  # not a multiple of the pass's batch of 128: unequal batches are merged


def make_config(method, model_dir="/tmp/unused", **overrides):
  values = dict(method=method, dataset="digits", width=4, batch_size=16, train_steps=10,
                model_dir=str(model_dir), bn_statistics_images=IMAGES, image_every=5,
                log_every=5)
  values.update(overrides)
  return config_lib.resolve(values)


def corrupt(model, rng):
  """Moving statistics from inputs unlike the served ones (training-mode calls, momentum 0.9)."""
  shape = model.encoder.inputs[0].shape[1:]

  @tf.function
  def update(noise, far):
    model.encoder(noise, training=True)
    model.generator(far, training=True)

  for _ in range(30):
    noise = rng.uniform(-1, 1, (16, *shape)).astype(np.float32) * 0.2 + 0.7
    far = rng.standard_normal((16, model.latent_dim)).astype(np.float32) * 4 + 3
    update(tf.constant(noise), tf.constant(far))


@pytest.fixture(scope="module")
def test_images():
  spec = data.get_spec("digits")
  return np.concatenate([x.numpy() for x, _ in data.test_dataset(spec, 300)])


def build(method, rng, weights=None, **overrides):
  """A model of the tiny config (with `weights`: those values) with corrupted statistics."""
  config = make_config(method, **overrides)
  keras.utils.set_random_seed(0)
  model = METHODS[method].create(config)
  model.build_optimizers()
  if model.data_dependent_init:
    model.initialize_from_data(tf.zeros(model.encoder.inputs[0].shape[1:]))
  for variable, value in zip(model.variables, weights or [], strict=bool(weights)):
    variable.assign(value)
  corrupt(model, rng)
  return config, model


@pytest.fixture(scope="module")
def autoencoder():
  """AGE's tiny networks after 150 steps of a plain autoencoder loss: its variables' values."""
  config = make_config("age")
  keras.utils.set_random_seed(0)
  model = METHODS["age"].create(config)
  spec = data.get_spec("digits")
  train = np.concatenate([data.to_float(b["image"]).numpy()
                          for b in data.source(spec, "train").batch(2000)])
  variables = model.encoder.trainable_variables + model.generator.trainable_variables
  optimizer = keras.optimizers.Adam(5e-3)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_mean(tf.square(model.reconstruct(x, training=True) - x))
    optimizer.apply(tape.gradient(loss, variables), variables)

  rng = np.random.default_rng(0)
  for _ in range(150):
    step(tf.constant(train[rng.choice(len(train), 32)]))
  return [v.numpy() for v in model.variables]


def recon_error(model, images, training):
  """Pixel MSE in [0, 1]; training mode's moving-statistics updates are undone."""
  with inference_statistics.preserved(model):
    reconstructions = model.reconstruct(tf.constant(images), training=training).numpy()
  return float(np.mean(np.square((reconstructions - images) / 2.0)))


def outputs(model, images, codes):
  return {"encode": model.encode(tf.constant(images), training=False).numpy(),
          "generate": model.generate(tf.constant(codes), training=False).numpy(),
          "reconstruct": model.reconstruct(tf.constant(images), training=False).numpy()}


@pytest.mark.parametrize("mode", ["recompute", "recompute_shared"])
def test_recompute_brings_inference_mode_to_training_mode(mode, autoencoder, test_images):
  config, model = build("age", np.random.default_rng(0), autoencoder, bn_statistics=mode)
  # Training mode: batches of the run's size, as training's losses see them.
  batches = [test_images[i:i + 16] for i in range(0, 160, 16)]
  training = np.mean([recon_error(model, b, True) for b in batches])
  before = recon_error(model, test_images, False)
  served, _ = inference_statistics.prepare(model, config)
  after = recon_error(served, test_images, False)
  print(dict(training=training, before=before, after=after))
  assert before > 2 * training  # the corrupted moving statistics are far off
  assert abs(after - training) < 0.1 * training


def test_the_pass_changes_only_the_moving_statistics_and_served_restores_them(test_images):
  config, model = build("age", np.random.default_rng(1))
  statistics = {id(v) for v in inference_statistics.statistics_variables(model)}
  assert len(statistics) == 2 * (2 + 4)  # DCGAN 32x32: 2 encoder and 4 generator layers
  others = [v for v in model.variables if id(v) not in statistics]
  others += list(model.encoder_optimizer.variables) + list(model.generator_optimizer.variables)
  others_before = [v.numpy().copy() for v in others]
  noise_before = model.noise.state.numpy().copy()
  moving = inference_statistics.snapshot(model)
  settings = inference_statistics.settings_of(config)
  calibration = inference_statistics.calibration_for(config, settings)
  statistics_pass = inference_statistics.StatisticsPass(model, settings)
  with inference_statistics.served(model, statistics_pass, calibration) as view:
    assert view is statistics_pass.served and view.model is model
    served = inference_statistics.snapshot(model)
  # Within `served` every moving statistic changed; afterwards they are the very same bits.
  assert all(not np.allclose(a, b) for a, b in zip(moving, served))
  assert all(np.array_equal(a, b) for a, b in zip(moving, inference_statistics.snapshot(model)))
  inference_statistics.prepare(model, config)
  for before, variable in zip(others_before, others):
    assert np.array_equal(before, variable.numpy()), variable.path
  assert np.array_equal(noise_before, model.noise.state.numpy())
  # The same inputs give the same statistics (evaluate and export agree).
  for a, b in zip(served, inference_statistics.snapshot(model)):
    np.testing.assert_array_equal(a, b)


def assert_masked_copies(masked, images, fill):
  """Each of `masked` is its image with one rectangle (possibly empty) set to `fill`."""
  inside = masked != images
  assert np.all(masked[inside] == fill)
  rows, cols = inside.any(axis=(2, 3)), inside.any(axis=(1, 3))
  for i in range(len(images)):
    r, c = np.flatnonzero(rows[i]), np.flatnonzero(cols[i])
    if r.size:  # the box spanned by the changed pixels is all fill
      box = masked[i, r[0]:r[-1] + 1, c[0]:c[-1] + 1]
      assert np.all(box == fill), i
  # Sides uniform in 0..32 cover a quarter of the image on average (fewer pixels change:
  # some masked pixels already held the fill value only for fill -1).
  assert 0.15 < inside.mean() < 0.35, inside.mean()


@pytest.mark.parametrize("method,mode,fraction", [
    ("age", "recompute", None), ("gali4", "recompute", None), ("gali_mix", "recompute", None),
    ("ali --masked_inputs", "recompute", None), ("age", "recompute_shared", 0.5),
    ("gali4", "recompute_shared", 0.25)])
def test_statistics_are_the_population_moments_of_the_layer_inputs(method, mode, fraction):
  """Every served statistic is the mean and variance of its layer's inputs over the calibration
  inputs; the encoder inputs of a run trained on masked ones (GALI-mix, --masked_inputs) are
  the calibration images masked as in training."""
  method, *masked = method.split()
  config, model = build(method, np.random.default_rng(2), bn_statistics=mode,
                        bn_statistics_prior_fraction=fraction or 0.5,
                        **({"masked_inputs": True} if masked else {}))
  settings = inference_statistics.settings_of(config)
  calibration = inference_statistics.calibration_for(config, settings)
  assert len(calibration.images) == IMAGES
  served, info = inference_statistics.prepare(model, config, settings, calibration)
  images = calibration.images.astype(np.float32) / 127.5 - 1.0
  assert model.masks_encoder_inputs == (method == "gali_mix" or bool(masked))
  if model.masks_encoder_inputs:
    masked = inference_statistics.encoder_inputs(model, calibration, settings.seed)
    assert_masked_copies(masked, images, config.mask_fill)
    assert config.mask_fill == -2.0 and info["encoder_inputs"].startswith("training images, masked")
    images = masked
  else:
    assert info["encoder_inputs"] == "training images"
  encodings = model.encode(tf.constant(images)).numpy()
  if mode == "recompute":
    # Each signature's inputs: prior draws for the generator, encodings for reconstruct's.
    networks = [(model.encoder, images), (model.generator, calibration.prior),
                (served.reconstruction_generator, encodings)]
    assert info["generator_prior_draws"] == info["reconstruct_generator_encodings"] == IMAGES
  else:
    num_prior = round(IMAGES * fraction)
    networks = [(model.encoder, images), (model.generator, np.concatenate(
        [encodings[:IMAGES - num_prior], calibration.prior[:num_prior]]))]
    assert served.reconstruction_generator is None
    assert (info["generator_prior_draws"], info["generator_encodings"]) == (
        num_prior, IMAGES - num_prior)
  checked = 0
  for network, inputs in networks:
    for layer in network.layers:
      if not hasattr(layer, "moving_mean"):
        continue
      # The layer's inputs over every calibration input at once, in inference mode.
      probe = keras.Model(network.inputs, layer.input)
      x = probe(tf.constant(inputs), training=False).numpy().astype(np.float64)
      x = x.reshape(-1, x.shape[-1])
      # The mean to 1e-5 of the channel's std (measured: at most 2e-7; float32 sums in the
      # pass put it 2e-4 off).
      np.testing.assert_allclose((layer.moving_mean.numpy() - x.mean(0)) / x.std(0), 0.0,
                                 atol=1e-5, err_msg=f"{network.name}/{layer.name} mean")
      np.testing.assert_allclose(layer.moving_variance.numpy(), x.var(0), rtol=1e-4, atol=1e-6,
                                 err_msg=f"{network.name}/{layer.name} variance")
      checked += 1
  assert checked == (6 if method == "age" else 12) + (
      (4 if method == "age" else 6) if mode == "recompute" else 0)


def test_export_serves_the_recomputed_statistics_as_keras_does(tmp_path, test_images):
  config, model = build("gali4", np.random.default_rng(3), model_dir=tmp_path / "run")
  checkpointing.save_flags(config)
  step = tf.Variable(7, dtype=tf.int64)
  checkpointing.make_checkpoint(model, step).save(
      os.path.join(checkpointing.checkpoint_dir(config.model_dir), "ckpt"))
  path = export.export_model(config.model_dir, str(tmp_path / "serving"))
  _, served, _, info = inference_statistics.load_served_model(config.model_dir)
  moving = outputs(model, test_images[:20], np.ones((5, config.latent_dim), np.float32))
  want = outputs(served, test_images[:20], np.ones((5, config.latent_dim), np.float32))
  loaded = tf.saved_model.load(path)
  got = {"encode": loaded.signatures["encode"](images=tf.constant(test_images[:20]))["codes"],
         "generate": loaded.signatures["generate"](codes=tf.ones((5, config.latent_dim)))[
             "images"],
         "reconstruct": loaded.signatures["reconstruct"](images=tf.constant(test_images[:20]))[
             "reconstructions"]}
  for name, value in got.items():
    np.testing.assert_allclose(value.numpy(), want[name], atol=1e-5, err_msg=name)
    # ... and not what the checkpoint's moving statistics give.
    assert np.max(np.abs(want[name] - moving[name])) > 1e-3, name
  metadata = export.read_metadata(path)
  assert metadata["bn_statistics"] == info
  assert info["mode"] == "recompute" and info["encoder_images"] == IMAGES
  # reconstruct runs the generator's own weights (not a copy): one set of them is exported.
  exported = sum(int(np.prod(shape)) for name, shape in tf.train.list_variables(
      os.path.join(path, "variables", "variables")) if "VARIABLE_VALUE" in name)
  networks = sum(int(np.prod(v.shape)) for v in model.encoder.weights + model.generator.weights)
  own = sum(int(np.prod(v.shape)) for v in served.reconstruction_generator.weights
            if "moving" in v.path)
  print(exported, networks, own)
  assert exported == networks + own + 1  # + the metadata string
  # --bn_statistics=moving exports the checkpoint's moving averages.
  moving_path = export.export_model(config.model_dir, str(tmp_path / "serving"),
                                    settings=inference_statistics.Settings(mode="moving"))
  reconstruct = tf.saved_model.load(moving_path).signatures["reconstruct"]
  np.testing.assert_allclose(reconstruct(images=tf.constant(test_images[:20]))[
      "reconstructions"].numpy(), moving["reconstruct"], atol=1e-5)
  assert export.read_metadata(moving_path)["bn_statistics"] == {"mode": "moving"}


def test_training_figures_log_both_modes_and_leave_the_model_as_it_was(autoencoder, tmp_path):
  config, model = build("age", np.random.default_rng(4), autoencoder, model_dir=tmp_path)
  spec = config_lib.dataset_spec(config)
  before = [v.numpy().copy() for v in model.variables]
  figures = loop._Figures(config, spec, model)  # pylint: disable=protected-access
  writer = tf.summary.create_file_writer(os.path.join(config.model_dir, "train"))
  figures.write(writer, 5)
  writer.flush()
  for b, v in zip(before, model.variables):
    assert np.array_equal(b, v.numpy()), v.path
  events = read_events(config.model_dir)
  values = {tag: float(tf.make_ndarray(events.Tensors(tag)[0].tensor_proto))
            for tag in ("test/recon_pixel_mse", "test/recon_pixel_mse_moving",
                        "test/recon_pixel_mse_batch_stats")}
  print(values)
  # Served (recomputed) is near training mode; the corrupted moving averages are not.
  assert values["test/recon_pixel_mse_moving"] > 2 * values["test/recon_pixel_mse_batch_stats"]
  assert values["test/recon_pixel_mse"] < 1.2 * values["test/recon_pixel_mse_batch_stats"]


def test_settings_resolve_and_old_runs_default_to_recompute(tmp_path):
  config = make_config("age")
  assert inference_statistics.settings_of(config) == inference_statistics.Settings(
      "recompute", IMAGES, 0.5, config.seed)
  values = json.loads(config.to_json())
  for key in ("bn_statistics", "bn_statistics_images", "bn_statistics_prior_fraction"):
    del values[key]
  (tmp_path / "flags.json").write_text(json.dumps(values))
  old = checkpointing.saved_config(str(tmp_path))
  assert inference_statistics.settings_of(old).mode == "recompute"
  with pytest.raises(Exception, match="bn_statistics_prior_fraction"):
    inference_statistics.settings_of(config, prior_fraction=1.5)


@pytest.mark.parametrize("method", ["age", "gali4"])
def test_reconstruct_generator_is_the_generator_with_its_own_statistics(method):
  config, model = build(method, np.random.default_rng(5))
  copy = inference_statistics.with_own_statistics(model.generator)
  originals = inference_statistics.batch_norm_layers(model.generator)
  shared = inference_statistics.batch_norm_layers(copy)
  assert [type(l).__name__ for l in shared] == ["SharedBatchNormalization"] * len(originals)
  # Every other layer is the generator's own (weights shared, not copied).
  others = [l for l in copy.layers if l not in shared and l.weights]
  assert others and all(any(l is g for g in model.generator.layers) for l in others)
  codes = tf.constant(np.random.default_rng(0).standard_normal((6, config.latent_dim)),
                      tf.float32)
  for original, layer in zip(originals, shared):
    layer.moving_mean.assign(original.moving_mean)
    layer.moving_variance.assign(original.moving_variance)
  want = model.generator(codes).numpy()  # (untrained ALI outputs are about 1e-4)
  np.testing.assert_allclose(copy(codes).numpy(), want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
  for layer in shared:
    layer.moving_variance.assign(layer.moving_variance * 4.0)
  assert np.max(np.abs(copy(codes).numpy() - want)) > 0.01 * np.abs(want).max()


def skip_network():
  """Three BatchNorm layers; a skip connection from the inputs reaches the third's inputs."""
  x = keras.Input((8, 8, 3))
  first = keras.layers.BatchNormalization()
  second = keras.layers.BatchNormalization()
  third = keras.layers.BatchNormalization()
  h = keras.layers.Conv2D(4, 3, padding="same")(x)
  h = keras.layers.Conv2D(4, 3, padding="same")(keras.layers.ReLU()(first(h)))
  h = keras.layers.Add()([keras.layers.ReLU()(second(h)), keras.layers.Conv2D(4, 1)(x)])
  return keras.Model(x, keras.layers.Conv2D(2, 1)(third(h)))


@pytest.mark.parametrize("max_kept_bytes,starts", [(None, [-1, 0, -1]), (0, [-1, -1, -1])])
def test_the_pass_goes_segment_by_segment_where_the_graph_and_memory_allow(
    monkeypatch, max_kept_bytes, starts):
  """Layer k's inputs come from layer k-1's kept inputs (one network pass in all), from the
  network's inputs past a skip connection or when they would not fit in MAX_KEPT_BYTES;
  either way each layer gets its inputs' population moments."""
  if max_kept_bytes is not None:
    monkeypatch.setattr(inference_statistics, "MAX_KEPT_BYTES", max_kept_bytes)
  keras.utils.set_random_seed(0)
  network = skip_network()
  rng = np.random.default_rng(0)
  inputs = rng.standard_normal((300, 8, 8, 3)).astype(np.float32)
  network_pass = inference_statistics.NetworkPass(network)
  # The first run is eager, the second runs traced functions: both must reach the fixed point.
  for run in range(2):
    for layer in network_pass.layers:  # statistics far from the inputs' own
      layer.moving_mean.assign(rng.standard_normal(layer.moving_mean.shape) * 3)
      layer.moving_variance.assign(rng.uniform(5, 10, layer.moving_variance.shape))
    network_pass.recompute([tf.constant(inputs[i:i + 128]) for i in range(0, 300, 128)])
    assert network_pass.starts == starts
    for layer in network_pass.layers:
      x = keras.Model(network.inputs, layer.input)(tf.constant(inputs), training=False).numpy()
      x = x.astype(np.float64).reshape(-1, x.shape[-1])
      np.testing.assert_allclose(layer.moving_mean.numpy(), x.mean(0),
                                 atol=1e-5 * x.std(0).max(), err_msg=f"run {run}")
      np.testing.assert_allclose(layer.moving_variance.numpy(), x.var(0), rtol=1e-4,
                                 err_msg=f"run {run}")
  # age_tf's networks are chains: every layer after the first starts from the one before it.
  config, model = build("gali4", np.random.default_rng(2))
  settings = inference_statistics.settings_of(config)
  statistics_pass = inference_statistics.StatisticsPass(model, settings)
  statistics_pass.run(inference_statistics.calibration_for(config, settings))
  for network_pass in (statistics_pass.encoder, statistics_pass.generator,
                       statistics_pass.reconstruction):
    layers = len(network_pass.layers)
    assert network_pass.starts == (list(range(-1, layers - 1)) if max_kept_bytes is None
                                   else [-1] * layers)
