"""The AGE method: each phase updates only its network, objectives as coded, the LR schedule."""

import numpy as np
import pytest
import tensorflow as tf

from age_tf import config as config_lib
from age_tf import divergences
from age_tf.methods import AGE
from age_tf.methods.base import EpochStepDecay

from conftest import changed, snapshot


def make_model(**overrides):
  values = dict(dataset="digits", width=8, latent_dim=6, batch_size=16, seed=1)
  values.update(overrides)
  model = AGE.create(config_lib.resolve(values))
  model.build_optimizers()
  return model


def images(count=16, seed=0):
  return tf.random.stateless_uniform([count, 32, 32, 1], [seed, 0], -1.0, 1.0)


def test_encoder_step_updates_only_the_encoder():
  model = make_model()
  encoder, generator = snapshot(model.encoder.trainable_variables), snapshot(
      model.generator.trainable_variables)
  model.encoder_step(images())
  assert all(changed(encoder, model.encoder.trainable_variables))
  assert not any(changed(generator, model.generator.trainable_variables))
  assert int(model.encoder_optimizer.iterations) == 1
  assert int(model.generator_optimizer.iterations) == 0


def test_generator_step_updates_only_the_generator():
  model = make_model()
  encoder, generator = snapshot(model.encoder.trainable_variables), snapshot(
      model.generator.trainable_variables)
  model.generator_step(16)
  assert not any(changed(encoder, model.encoder.trainable_variables))
  assert all(changed(generator, model.generator.trainable_variables))
  assert int(model.generator_optimizer.iterations) == 1


@pytest.mark.parametrize("generator_x_recon_weight,batches", [(0.0, 1), (1.0, 3)])
def test_train_step_is_one_encoder_and_two_generator_updates(generator_x_recon_weight, batches):
  model = make_model(generator_x_recon_weight=generator_x_recon_weight)
  assert model.batches_per_step == batches
  batch = tf.stack([images(seed=i) for i in range(batches)])
  metrics = tf.function(model.train_step, autograph=False)(batch)
  assert set(metrics) == set(model.metric_names)
  assert ("generator/x_recon" in metrics) == bool(generator_x_recon_weight)
  assert int(model.encoder_optimizer.iterations) == 1
  assert int(model.generator_optimizer.iterations) == 2
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_encoder_objective_is_kl_real_minus_kl_fake_plus_mu_l1():
  """Recomputes the encoder loss from the same draws, independently of the method."""
  model = make_model(x_recon_weight=10.0)
  x = images()
  # The prior draw the step will make, from a copy of the generator state.
  noise = tf.random.Generator.from_state(model.noise.state.numpy(), model.noise.algorithm)
  z = tf.math.l2_normalize(noise.normal([16, model.latent_dim]), axis=-1)
  fake = model.generator(z, training=True)
  real_codes = model.encoder(x, training=True)
  recon = model.generator(real_codes, training=True)
  fake_codes = model.encoder(fake, training=True)

  def kl(codes):
    c = codes.numpy().astype(np.float64)
    m, v = c.mean(0), c.var(0)
    return np.mean((v ** 2 + m ** 2) / 2 - np.log(v) - 0.5)

  expected = kl(real_codes) - kl(fake_codes) + 10.0 * np.abs(x.numpy() - recon.numpy()).mean()
  metrics = model.encoder_step(x)
  assert float(metrics["encoder/loss"]) == pytest.approx(expected, rel=1e-4)
  assert float(metrics["encoder/kl_fake"]) == pytest.approx(kl(fake_codes), rel=1e-4)


def test_generator_objective_is_kl_fake_plus_lambda_cos():
  model = make_model(z_recon_weight=1000.0)
  noise = tf.random.Generator.from_state(model.noise.state.numpy(), model.noise.algorithm)
  z = tf.math.l2_normalize(noise.normal([16, model.latent_dim]), axis=-1)
  codes = model.encoder(model.generator(z, training=True), training=True).numpy()
  c = codes.astype(np.float64)
  kl = np.mean((c.var(0) ** 2 + c.mean(0) ** 2) / 2 - np.log(c.var(0)) - 0.5)
  cos = 2 - np.mean(z.numpy() * codes)  # both on the unit sphere already
  metrics = model.generator_step(16)
  assert float(metrics["generator/loss"]) == pytest.approx(kl + 1000.0 * cos, rel=1e-5)


def test_prior_draws_are_on_the_sphere_or_gaussian():
  sphere = make_model().sample_prior(1000).numpy()
  np.testing.assert_allclose(np.linalg.norm(sphere, axis=1), 1.0, rtol=1e-5)
  gauss = make_model(prior="gaussian").sample_prior(20000).numpy()
  assert abs(gauss.std() - 1.0) < 0.02 and abs(gauss.mean()) < 0.02
  codes = make_model(prior="gaussian").encode(images())
  assert not np.allclose(np.linalg.norm(codes, axis=1), 1.0)


def test_knn_estimator_trains():
  model = make_model(kl_estimator="knn")
  metrics = tf.function(model.train_step, autograph=False)(images()[None])
  assert np.isfinite(float(metrics["encoder/loss"]))


def authors_lr(initial, drop_lr, epoch, factor=0.5):
  """The authors' adjust_lr(epoch), applied at the start of every epoch from 0."""
  lr = initial
  for e in range(epoch + 1):
    if e % drop_lr == drop_lr - 1:
      lr *= factor
  return lr


@pytest.mark.parametrize("drop_lr,epochs", [(40, 150), (3, 6), (5, 5)])
def test_schedule_follows_the_authors_epoch_rule(drop_lr, epochs):
  updates_per_epoch = 7
  schedule = EpochStepDecay(2e-4, updates_per_epoch, drop_lr, 0.5)
  for epoch in range(epochs):
    for update in (epoch * updates_per_epoch, (epoch + 1) * updates_per_epoch - 1):
      assert float(schedule(update)) == pytest.approx(authors_lr(2e-4, drop_lr, epoch), rel=1e-6)
  # CIFAR-10: halved at the start of (0-based) epochs 39, 79 and 119.
  cifar = EpochStepDecay(2e-4, 1, 40, 0.5)
  assert [float(cifar(e)) for e in (38, 39, 79, 119)] == pytest.approx([2e-4, 1e-4, 5e-5, 2.5e-5])


def test_generator_schedule_counts_its_own_updates():
  model = make_model(lr_decay_epochs=1, lr_decay_factor=0.5, learning_rate=2e-4)
  steps_per_epoch = model.config.steps_per_epoch
  # The generator updates twice per step, so its epoch is twice as many updates.
  assert model.generator_optimizer.learning_rate.numpy() == pytest.approx(1e-4)  # epoch 0 of 1
  model.generator_optimizer.iterations.assign(2 * steps_per_epoch)
  model.encoder_optimizer.iterations.assign(steps_per_epoch)
  assert float(model.generator_optimizer.learning_rate) == pytest.approx(5e-5)
  assert float(model.encoder_optimizer.learning_rate) == pytest.approx(5e-5)


def test_ideal_kl_reference_value():
  assert divergences.ideal_sphere_kl(10) == pytest.approx(np.log(10) - 0.5 + 0.005)
