"""AGE: the adversarial generator-encoder game of Ulyanov et al. (2018), as the authors' code computes it."""

import tensorflow as tf

from age_tf import divergences
from age_tf.errors import UserError
from age_tf.methods import base
from age_tf.networks import dcgan
from age_tf.settings import Setting

# What AGE reads beyond the shared settings; defaults of None come from PAPER_DEFAULTS.
SETTINGS = (
    Setting("kl_estimator", "enum", "KL(Q || N(0, I)) estimator: moments (paper eq. 8, "
            "parametric) or knn (Kozachenko-Leonenko, paper 3.1).", default="moments",
            choices=tuple(divergences.KL_ESTIMATORS)),
    Setting("kl_reduction", "enum", "Average the KL over latent dimensions (authors' code) "
            "or sum (eq. 8).", default="mean", choices=tuple(divergences.REDUCTIONS)),
    Setting("x_recon_loss", "enum", "Data-space reconstruction loss: l1 (AGE authors' code, "
            "the default) or l2, mean squared error (AGE paper eq. 3).", choices=("l1", "l2")),
    Setting("z_recon_loss", "enum", "Latent reconstruction loss: cos (authors' code) or l2, "
            "mean squared error (paper eq. 4), or l1.", default="cos",
            choices=tuple(divergences.RECONSTRUCTION_LOSSES)),
    Setting("x_recon_weight", "float", "AGE's mu: weight of the data reconstruction loss in "
            "the encoder objective (default 10; 0 with --z_recon_weight=0: Fig. 2c ablation).",
            non_negative=True),
    Setting("z_recon_weight", "float", "AGE's lambda: weight of the latent reconstruction loss "
            "in the generator objective (default: the paper's 1000; digits 100).",
            non_negative=True),
    Setting("generator_x_recon_weight", "float", "Weight of the data reconstruction loss in "
            "the generator objective (paper Fig. 9 ablation; 0 = off).", default=0.0,
            non_negative=True),
    Setting("generator_steps", "integer", "Generator updates per encoder update (default: 2, "
            "CelebA 3).", positive=True),
)


# The paper's per-dataset settings (section 3.1 and the authors' commands).
# MNIST and SVHN have no published command: 50 epochs with a halving every
# 20 matches the paper's "about two hours on a TITAN X" budget.
_PAPER = dict(batch_size=64, prior="sphere", x_recon_weight=10.0, x_recon_loss="l1",
              width=64, generator_steps=2, learning_rate=2e-4, z_recon_weight=1000.0)
PAPER_DEFAULTS = {
    "mnist": dict(_PAPER, latent_dim=10, epochs=50, lr_decay_epochs=20),
    "svhn": dict(_PAPER, latent_dim=64, epochs=50, lr_decay_epochs=20),
    "cifar10": dict(_PAPER, latent_dim=128, epochs=150, lr_decay_epochs=40),
    "celeba": dict(_PAPER, latent_dim=64, generator_steps=3, epochs=5, lr_decay_epochs=5),
    # Tiny ImageNet (and any other folder): M = 128, 6 epochs, drop every 3
    # (the Tiny ImageNet flagfile also sets the authors' lambda = 2000).
    "folder": dict(_PAPER, latent_dim=128, epochs=6, lr_decay_epochs=3),
    # digits is ours, sized to learn in a few minutes on a 2-core CPU
    # (measured over seeds; see DIGITS in the README):
    # * M = 10, MNIST's: ten classes of handwritten digits.
    # * width 16: 8x8 digits upsampled to 32x32 carry little detail, and a
    #   step costs a seventh of the full width's.
    # * lambda = 100: the cosine latent loss weighs each sample by lambda/M;
    #   lambda = 100 at M = 10 gives 10, near CIFAR-10's 1000/128 = 7.8 for
    #   which the weights were tuned. With 1000 (100 per sample) the generator
    #   all but ignores the adversarial KL, the encoder wins it, and
    #   reconstructions decay after a few hundred steps.
    # * learning rate 1e-3: at 2e-4 the game leaves its initial plateau
    #   (samples still noise) anywhere from step 250 to 700 depending on the
    #   seed; at 1e-3 by step 200 for every seed tried.
    "digits": dict(_PAPER, latent_dim=10, width=16, learning_rate=1e-3, z_recon_weight=100.0,
                   epochs=40, lr_decay_epochs=0),
}


class AGE(base.BidirectionalModel):
  """Adversarial Generator-Encoder networks.

  One training step is one encoder update followed by `generator_steps`
  generator updates (paper eqs. 5-6, authors' code):

    encoder:   KL(e(x)) - KL(e(g(z))) + mu * L_x(x, g(e(x)))   (g(z) detached)
    generator: KL(e(g(z))) + lambda * L_z(z, e(g(z)))          (+ optional
               data reconstruction, the paper's Fig. 9 ablation)

  Each update draws a fresh z and its own real batch and changes only its
  own network. KL is the estimator chosen by --kl_estimator against N(0, I),
  on the moments of the global batch.
  """

  method_name = "age"
  settings = SETTINGS

  def __init__(self, config, encoder, generator):
    super().__init__(config, encoder, generator)
    self.generator_steps = config.generator_steps
    self.encoder_optimizer = base.adam(config, 1, "encoder_adam")
    self.generator_optimizer = base.adam(config, self.generator_steps, "generator_adam")

  @classmethod
  def create(cls, config, synchronized_bn=False):
    """AGE with the authors' DCGAN encoder and generator for the config's image size."""
    sphere = config.prior == "sphere"
    shape = (config.image_size, config.channels, config.latent_dim)
    transposed_conv = cls.transposed_conv(config)
    with base.precision(config):
      encoder = dcgan.build_encoder(*shape, sphere=sphere, width=config.width,
                                    synchronized_bn=synchronized_bn,
                                    transposed_conv=transposed_conv)
      generator = dcgan.build_generator(*shape, width=config.width,
                                        synchronized_bn=synchronized_bn,
                                        transposed_conv=transposed_conv)
    return cls(config, base.float32_outputs(encoder), base.float32_outputs(generator))

  @classmethod
  def paper_defaults(cls, spec):
    """The per-dataset defaults for a data.DatasetSpec."""
    return PAPER_DEFAULTS["folder" if spec.source == "folder" else spec.name]

  @classmethod
  def check_settings(cls, values):
    if values["kl_estimator"] == "knn" and values["batch_size"] < 2:
      raise UserError("--kl_estimator=knn needs --batch_size of at least 2.")

  @property
  def batches_per_step(self):
    # The generator needs real images only for the Fig. 9 ablation.
    return 1 + (self.generator_steps if self.config.generator_x_recon_weight else 0)

  @property
  def progress_keys(self):
    return ("encoder/kl_real", "encoder/kl_fake", "generator/kl_fake", "encoder/x_recon",
            "generator/z_recon")

  @property
  def metric_names(self):
    names = ["encoder/loss", "encoder/kl_real", "encoder/kl_fake",
             "generator/loss", "generator/kl_fake", "generator/z_recon",
             "codes/real_mean", "codes/real_var", "codes/fake_mean", "codes/fake_var"]
    if self.config.x_recon_weight:
      names.append("encoder/x_recon")
    if self.config.generator_x_recon_weight:
      names.append("generator/x_recon")
    return tuple(names)

  def optimizers(self):
    return {"encoder_optimizer": (self.encoder_optimizer, self.encoder.trainable_variables),
            "generator_optimizer": (self.generator_optimizer, self.generator.trainable_variables)}

  def _kl(self, codes):
    return divergences.kl_and_moments(codes, self.config.kl_estimator, self.config.kl_reduction)

  def _x_recon(self, images, codes):
    """Data-space reconstruction loss between images and g(codes)."""
    return divergences.reconstruction_loss(
        images, self.generator(codes, training=True), self.config.x_recon_loss)

  def encoder_step(self, images):
    """One encoder update; returns its metrics."""
    cfg = self.config
    fake = tf.stop_gradient(self.generator(self.sample_prior(tf.shape(images)[0]), training=True))
    with tf.GradientTape() as tape:
      real_codes = self.encoder(images, training=True)
      kl_real, real_mean, real_var = self._kl(real_codes)
      loss = kl_real
      metrics = {}
      if cfg.x_recon_weight:
        x_recon = self._x_recon(images, real_codes)
        loss += cfg.x_recon_weight * x_recon
        metrics["encoder/x_recon"] = x_recon
      kl_fake, _, _ = self._kl(self.encoder(fake, training=True))
      loss -= kl_fake
    self.apply_gradients(self.encoder_optimizer, tape, loss,
                         self.encoder.trainable_variables)
    metrics.update({"encoder/loss": loss, "encoder/kl_real": kl_real, "encoder/kl_fake": kl_fake},
                   **_code_stats("real", real_mean, real_var))
    return metrics

  def generator_step(self, batch_size, images=None):
    """One generator update; `images` only for the data-reconstruction ablation."""
    cfg = self.config
    z = self.sample_prior(batch_size)
    with tf.GradientTape() as tape:
      fake_codes = self.encoder(self.generator(z, training=True), training=True)
      kl_fake, fake_mean, fake_var = self._kl(fake_codes)
      z_recon = divergences.reconstruction_loss(z, fake_codes, cfg.z_recon_loss)
      loss = kl_fake + cfg.z_recon_weight * z_recon
      metrics = {}
      if images is not None:
        x_recon = self._x_recon(images, tf.stop_gradient(self.encoder(images, training=True)))
        loss += cfg.generator_x_recon_weight * x_recon
        metrics["generator/x_recon"] = x_recon
    self.apply_gradients(self.generator_optimizer, tape, loss,
                         self.generator.trainable_variables)
    metrics.update({"generator/loss": loss, "generator/kl_fake": kl_fake,
                    "generator/z_recon": z_recon}, **_code_stats("fake", fake_mean, fake_var))
    return metrics

  def train_step(self, images):
    metrics = self.encoder_step(images[0])
    batch_size = tf.shape(images)[1]
    generator_metrics = []
    for i in range(self.generator_steps):
      real = images[1 + i] if self.config.generator_x_recon_weight else None
      generator_metrics.append(self.generator_step(batch_size, real))
    # Generator metrics are the mean over this step's generator updates.
    metrics.update({k: tf.add_n([m[k] for m in generator_metrics]) / len(generator_metrics)
                    for k in generator_metrics[0]})
    return metrics


def _code_stats(which, mean, var):
  """What the paper says to watch: the component-wise mean and variance, averaged over M."""
  return {f"codes/{which}_mean": tf.reduce_mean(mean), f"codes/{which}_var": tf.reduce_mean(var)}
