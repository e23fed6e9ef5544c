"""The training loop: resume, model_dir checks, TensorBoard events, PNGs and flags.json."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import loop
from age_tf.errors import UserError
from age_tf.methods import AGE

from conftest import LEARNING_STEPS, read_events

# Figures' served statistics from 128 images: the statistics pass is under test
# in inference_statistics_test, not here.
SMALL = dict(dataset="digits", width=8, latent_dim=6, batch_size=16, log_every=2, image_every=4,
             checkpoint_every=2, steps_per_loop=2, bn_statistics_images=128)


def small_config(model_dir, **overrides):
  return config_lib.resolve(dict(SMALL, model_dir=str(model_dir), **overrides))


def weights(model):
  return [v.numpy() for v in model.encoder.trainable_variables + model.generator.trainable_variables]


def test_resume_continues_step_weights_and_optimizer_state(tmp_path):
  loop.train(small_config(tmp_path, train_steps=4))
  config4, model4, step4 = checkpointing.load_model(str(tmp_path))
  assert step4 == 4
  assert int(model4.encoder_optimizer.iterations) == 4
  assert int(model4.generator_optimizer.iterations) == 8  # two generator updates per step
  fresh = AGE.create(config4)  # the same seed: what a restart from scratch would hold
  assert not all(np.array_equal(a, b) for a, b in zip(weights(fresh), weights(model4)))
  slots4 = [v.numpy() for v in model4.encoder_optimizer.variables[2:]]

  # Rerun the same command, to 8 steps, with learning rate 0: the weights can
  # only be the step-4 ones if they were restored rather than re-initialised.
  loop.train(small_config(tmp_path, train_steps=8, learning_rate=0.0))
  _, model8, step8 = checkpointing.load_model(str(tmp_path))
  assert step8 == 8
  assert int(model8.encoder_optimizer.iterations) == 8
  assert int(model8.generator_optimizer.iterations) == 16
  for a, b in zip(weights(model4), weights(model8)):
    np.testing.assert_array_equal(a, b)
  slots8 = [v.numpy() for v in model8.encoder_optimizer.variables[2:]]
  assert any(not np.array_equal(a, b) for a, b in zip(slots4, slots8))  # Adam moments moved on
  assert os.path.basename(checkpointing.latest_checkpoint(str(tmp_path))) == "ckpt-8"

  # The summaries continue from step 4 rather than starting again.
  loss_steps = [e.step for e in read_events(str(tmp_path)).Tensors("encoder/loss")]
  assert loss_steps == [2, 4, 6, 8]

  # Running the finished command again does nothing.
  assert loop.train(small_config(tmp_path, train_steps=8)) == {}


def test_model_dir_of_another_shape_is_refused(tmp_path):
  loop.train(small_config(tmp_path, train_steps=2))
  with pytest.raises(UserError) as e:
    loop.train(small_config(tmp_path, train_steps=4, latent_dim=7))
  assert "--latent_dim=6 there, --latent_dim=7 here" in str(e.value)
  assert "new --model_dir" in str(e.value)
  assert checkpointing.saved_config(str(tmp_path)).latent_dim == 6  # flags.json untouched


def test_unprepared_dataset_fails_before_writing_anything(tmp_path):
  model_dir = tmp_path / "run"
  config = config_lib.resolve(dict(dataset="cifar10", data_dir=str(tmp_path / "tfds"),
                                   download=False, width=8, model_dir=str(model_dir)))
  with pytest.raises(UserError, match="'cifar10' is not prepared"):
    loop.train(config)
  assert not model_dir.exists()


def test_flags_json_records_the_resolved_config(digits_run):
  model_dir, _ = digits_run
  with open(os.path.join(model_dir, "flags.json")) as f:
    saved = json.load(f)
  assert saved["method"] == "age" and saved["dataset"] == "digits"
  assert saved["train_steps"] == LEARNING_STEPS and saved["latent_dim"] == 10
  assert checkpointing.saved_config(model_dir).identity() == {
      k: saved[k] for k in config_lib.IDENTITY_KEYS}


def test_tensorboard_events_have_every_tag(digits_run):
  model_dir, _ = digits_run
  events = read_events(model_dir)
  tags = set(events.Tags()["tensors"])
  expected = {"encoder/loss", "encoder/kl_real", "encoder/kl_fake", "encoder/x_recon",
              "generator/loss", "generator/kl_fake", "generator/z_recon",
              "codes/real_mean", "codes/real_var", "codes/fake_mean", "codes/fake_var",
              "learning_rate/encoder", "learning_rate/generator",
              "perf/steps_per_sec", "perf/images_per_sec",
              "images/samples", "images/reconstructions", "test/recon_pixel_mse",
              "test/recon_pixel_mse_moving", "test/recon_pixel_mse_batch_stats"}
  assert expected <= tags, expected - tags
  # Scalars every --log_every=50 steps and at the end; images every 500 and at 0.
  steps = [e.step for e in events.Tensors("encoder/kl_real")]
  assert steps == list(range(50, LEARNING_STEPS, 50)) + [LEARNING_STEPS]
  lr = [float(tf.make_ndarray(e.tensor_proto)) for e in events.Tensors("learning_rate/encoder")]
  assert lr == pytest.approx([1e-3] * len(lr))
  image_steps = [e.step for e in events.Tensors("images/samples")]
  assert image_steps == [0, 500, LEARNING_STEPS]
  # The served test reconstruction error, at the image steps.
  assert [e.step for e in events.Tensors("test/recon_pixel_mse")] == image_steps
  # An image summary holds [width, height, PNG bytes].
  width, height, png = tf.make_ndarray(events.Tensors("images/reconstructions")[-1].tensor_proto)
  assert (int(width), int(height)) == (256, 256)
  assert tf.io.decode_png(png).shape == (256, 256, 1)


def test_png_grids_are_written(digits_run):
  model_dir, _ = digits_run
  for name in ("samples.png", "reconstructions.png"):
    with Image.open(os.path.join(model_dir, name)) as image:
      assert image.size == (256, 256)  # 8 x 8 tiles of 32 x 32
      pixels = np.asarray(image)
    assert pixels.std() > 10  # not a blank image
  assert not [f for f in os.listdir(model_dir) if ".tmp" in f]  # no temporary files left


def test_console_reports_progress(digits_run):
  _, result = digits_run
  assert f"step {LEARNING_STEPS}/{LEARNING_STEPS}" in result.stderr
  assert "ETA" in result.stderr
