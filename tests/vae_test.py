"""The VAE method: its update descends the negative ELBO restated here, encode is the mean, and it learns digits."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf import config as config_lib
from age_tf import data
from age_tf import export
from age_tf import loop
from age_tf.errors import UserError
from age_tf.methods import METHODS

# The recording optimizer and the comparisons of the update-maths tests.
from update_maths_test import BATCH, LATENT, SEED, WIDTH  # pylint: disable=g-bad-import-order
from update_maths_test import RecordingSGD, check_descent, check_metric, check_update
from update_maths_test import f64, real_batches, restated_gradients, run_step


def vae_model(**overrides):
  values = dict(method="vae", dataset="digits", latent_dim=LATENT, width=WIDTH,
                batch_size=BATCH, seed=SEED, **overrides)
  keras.utils.set_random_seed(SEED)
  model = METHODS["vae"].create(config_lib.resolve(values))
  log = []
  model.vae_optimizer = RecordingSGD("vae_optimizer", model, log)
  model.build_optimizers()
  assert model.optimizers()["vae_optimizer"][0] is model.vae_optimizer
  return model, log


@pytest.mark.parametrize("kl_weight,decoder_std", [(None, None), (0.5, 0.3)])
def test_the_update_descends_the_negative_elbo_restated(kl_weight, decoder_std):
  """One update of encoder and decoder together on
  sum_pixels (x - G(mu + sigma eps))^2 / (2 std^2) + w * KL(N(mu, sigma^2) || N(0, I)),
  averaged over the batch, sigma = exp(log_var / 2), eps the step's one normal draw."""
  overrides = {k: v for k, v in dict(kl_weight=kl_weight, decoder_std=decoder_std).items()
               if v is not None}
  model, log = vae_model(**overrides)
  weight, std = model.config.kl_weight, model.config.decoder_std
  assert (weight, std) == ((1.0, 0.1) if not overrides else (0.5, 0.3))
  images = real_batches(1)
  step = run_step(model, log, images)
  assert [u.optimizer for u in step.updates] == ["vae_optimizer"]
  x = f64(images[0])

  def negative_elbo(draws):
    outputs = f64(model.encoder(images[0], training=True))
    mean, log_var = outputs[:, :LATENT], outputs[:, LATENT:]
    eps = f64(draws.take("normal", (BATCH, LATENT)))
    z = mean + tf.exp(log_var / 2.0) * eps
    x_hat = f64(model.generator(tf.cast(z, tf.float32), training=True))
    reconstruction = tf.reduce_mean(tf.reduce_sum((x - x_hat) ** 2, axis=[1, 2, 3])) / (
        2.0 * std ** 2)
    kl = tf.reduce_mean(tf.reduce_sum(
        (tf.exp(log_var) + mean ** 2 - 1.0 - log_var) / 2.0, axis=1))
    return {"loss": reconstruction + weight * kl, "reconstruction": reconstruction, "kl": kl}

  values, grads, used = restated_gradients(model, step.start, negative_elbo, step.draws, 0,
                                           {"loss": ["encoder", "generator"]})
  assert used == len(step.draws), "the step made draws the ELBO does not use"
  check_update(step.updates[0], "vae_optimizer", grads["loss"], "VAE")
  check_descent(model, step.start, step.updates[0], negative_elbo, "loss", values["loss"],
                step.draws, 0, "VAE")
  for name in ("loss", "reconstruction", "kl"):
    check_metric(step, f"vae/{name}", values[name], "VAE")


def test_encode_is_the_posterior_mean_and_deterministic():
  model, _ = vae_model()
  images = real_batches(1)[0]
  outputs = model.encoder(images, training=False).numpy()
  assert outputs.shape == (BATCH, 2 * LATENT)
  codes = model.encode(images).numpy()
  np.testing.assert_array_equal(codes, outputs[:, :LATENT])
  np.testing.assert_array_equal(codes, model.encode(images).numpy())


def test_a_sphere_prior_is_refused():
  with pytest.raises(UserError, match="--method=vae has the prior N"):
    config_lib.resolve(dict(method="vae", prior="sphere"))
  with pytest.raises(UserError, match="--kl_weight applies to --method=vae, not to "
                                      "--method=age"):
    config_lib.resolve(dict(method="age", kl_weight=2.0))


def _errors(reconstruct, test):
  """Test pixel MSE in [0, 1] of reconstruct(x) against x and against another image."""
  recon = reconstruct(test)
  own = float(np.mean(((recon - test) / 2.0) ** 2))
  shuffled = float(np.mean(((recon - np.roll(test, 1, axis=0)) / 2.0) ** 2))
  return own, shuffled


def test_vae_learns_digits(tmp_path):
  """300 steps on digits (width 8): reconstructions served by the export carry each image's
  own digit, far better than the untrained networks, the mean training image and another
  image."""
  config = config_lib.resolve(dict(method="vae", dataset="digits", width=8, train_steps=300,
                                   model_dir=str(tmp_path / "run"), log_every=100,
                                   image_every=300, checkpoint_every=300))
  spec = config_lib.dataset_spec(config)
  test = data.test_images(spec, 300).numpy()
  mean_image = np.concatenate([x.numpy() for x, _ in data.labelled_dataset(
      spec, "train", 500)]).mean(0)
  mean_error = float(np.mean(((test - mean_image) / 2.0) ** 2))

  keras.utils.set_random_seed(config.seed)
  untrained = METHODS["vae"].create(config)
  untrained_own, _ = _errors(lambda x: untrained.reconstruct(x).numpy(), test)

  loop.train(config)
  export.export_after_training(config)
  served = tf.saved_model.load(str(tmp_path / "run" / "export" / "1"))
  reconstruct = served.signatures["reconstruct"]
  own, shuffled = _errors(
      lambda x: reconstruct(images=tf.constant(x))["reconstructions"].numpy(), test)
  assert own < 0.5 * mean_error, (own, mean_error)
  assert own < 0.4 * shuffled, (own, shuffled)
  assert own < 0.2 * untrained_own, (own, untrained_own)
