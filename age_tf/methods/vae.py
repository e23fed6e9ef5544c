"""VAE: the variational autoencoder of Kingma & Welling (2014) with the AGE DCGAN networks."""

import tensorflow as tf

from age_tf.errors import UserError
from age_tf.methods import base
from age_tf.networks import dcgan
from age_tf.settings import Setting

SETTINGS = (
    Setting("kl_weight", "float", "Weight of KL(q(z|x) || N(0, I)) in the negative ELBO "
            "(1: the ELBO itself; other values give a beta-VAE).", default=1.0,
            non_negative=True),
    Setting("decoder_std", "float", "Standard deviation of the decoder's Gaussian "
            "likelihood p(x|z) = N(G(z), std^2 I), in units of the [-1, 1] image range; "
            "smaller values weigh reconstruction more against the KL.", default=0.1,
            positive=True),
)

# Ours: the GALI paper's VAE row is a baseline without a published schedule.
# The AGE networks and batch at each dataset's AGE latent size, Adam 1e-3 on
# digits and 2e-4 elsewhere, 50 epochs (digits: AGE's 40).
_COMMON = dict(batch_size=64, prior="gaussian", width=64, learning_rate=2e-4, epochs=50,
               lr_decay_epochs=0)
DEFAULTS = {
    "mnist": dict(_COMMON, latent_dim=10),
    "svhn": dict(_COMMON, latent_dim=64),
    "cifar10": dict(_COMMON, latent_dim=128),
    "celeba": dict(_COMMON, latent_dim=64),
    "folder": dict(_COMMON, latent_dim=128),
    "digits": dict(_COMMON, latent_dim=10, width=16, learning_rate=1e-3, epochs=40),
}


class VAE(base.BidirectionalModel):
  """A Gaussian encoder q(z|x) = N(mu(x), diag sigma(x)^2) and a Gaussian decoder G.

  One step is one Adam update of both networks on the negative ELBO, per image

    ||x - G(z)||^2 / (2 std^2) + kl_weight * KL(q(z|x) || N(0, I)),
    z = mu + sigma * eps (the reparameterisation trick), eps ~ N(0, I),

  summed over pixels and latent dimensions and averaged over the batch (the
  likelihood's constant is left out). The encoder is AGE's DCGAN encoder
  with 2M outputs (mu, log sigma^2); `encode` is the mean mu.
  """

  method_name = "vae"
  settings = SETTINGS

  def __init__(self, config, encoder, generator):
    super().__init__(config, encoder, generator)
    self.vae_optimizer = base.adam(config, 1, "vae_adam")

  @classmethod
  def create(cls, config, synchronized_bn=False):
    shape = (config.image_size, config.channels)
    transposed_conv = cls.transposed_conv(config)
    with base.precision(config):
      encoder = dcgan.build_encoder(*shape, 2 * config.latent_dim, sphere=False,
                                    width=config.width, synchronized_bn=synchronized_bn,
                                    transposed_conv=transposed_conv)
      generator = dcgan.build_generator(*shape, config.latent_dim, width=config.width,
                                        synchronized_bn=synchronized_bn,
                                        transposed_conv=transposed_conv)
    return cls(config, base.float32_outputs(encoder), base.float32_outputs(generator))

  @classmethod
  def paper_defaults(cls, spec):
    return DEFAULTS["folder" if spec.source == "folder" else spec.name]

  @classmethod
  def check_settings(cls, values):
    if values["prior"] != "gaussian":
      raise UserError(f"--method=vae has the prior N(0, I): its KL term is against it; "
                      f"remove --prior={values['prior']}.")

  @property
  def batches_per_step(self):
    return 1

  @property
  def metric_names(self):
    return ("vae/loss", "vae/reconstruction", "vae/kl", "vae/pixel_mse", "codes/posterior_std")

  def optimizers(self):
    return {"vae_optimizer": (self.vae_optimizer, self.encoder.trainable_variables
                              + self.generator.trainable_variables)}

  def posterior(self, images, training):
    """(mu, log sigma^2) of q(z|x), each (B, M)."""
    outputs = self.encoder(images, training=training)
    return outputs[:, :self.latent_dim], outputs[:, self.latent_dim:]

  def encode(self, images, training=False):
    return self.posterior(images, training)[0]

  def train_step(self, images):
    x = images[0]
    std = self.config.decoder_std
    with tf.GradientTape() as tape:
      mean, log_var = self.posterior(x, training=True)
      eps = self.random.normal(tf.shape(mean), dtype=mean.dtype)
      z = mean + tf.exp(0.5 * log_var) * eps
      x_hat = self.generator(z, training=True)
      squared = tf.reduce_sum(tf.square(x - x_hat), axis=[1, 2, 3])
      reconstruction = tf.reduce_mean(squared) / (2.0 * std * std)
      kl = tf.reduce_mean(0.5 * tf.reduce_sum(
          tf.exp(log_var) + tf.square(mean) - 1.0 - log_var, axis=-1))
      loss = reconstruction + self.config.kl_weight * kl
    variables = self.encoder.trainable_variables + self.generator.trainable_variables
    self.apply_gradients(self.vae_optimizer, tape, loss, variables)
    pixels = tf.cast(tf.reduce_prod(tf.shape(x)[1:]), tf.float32)
    return {"vae/loss": loss, "vae/reconstruction": reconstruction, "vae/kl": kl,
            "vae/pixel_mse": tf.reduce_mean(squared) / pixels,
            "codes/posterior_std": tf.reduce_mean(tf.exp(0.5 * log_var))}
