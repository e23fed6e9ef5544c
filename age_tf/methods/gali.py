"""ALI, BiGAN, ALICE and the GALI family: a K-class discriminator over tuples of images, codes and features."""

import io
import os

import numpy as np
import tensorflow as tf

from age_tf import divergences
from age_tf import masks as masks_lib
from age_tf.errors import UserError
from age_tf.methods import base
from age_tf.networks import ali as ali_networks
from age_tf.settings import Setting

OBJECTIVES = ("product", "minimax", "misclassification")
NOISE_SCHEDULES = ("linear", "exponential")
MASK_SAMPLERS = masks_lib.SAMPLERS
# The exponential instance-noise schedule ends at this fraction of its start
# (the paper gives no rate; an exponential never reaches 0).
EXPONENTIAL_NOISE_END = 0.01

# What every method of the family reads beyond the shared settings; defaults
# of None come from the per-dataset schedules below.
FAMILY_SETTINGS = (
    Setting("gali_objective", "enum", "Generator-encoder objective: product of terms (GALI "
            "paper, authors' code), or the paper's ablations minimax and misclassification "
            "(Fig. 5e-f).", default="product", choices=OBJECTIVES),
    Setting("d_steps", "integer", "Discriminator updates per generator-encoder update, each "
            "on its own batch (default: the authors' per method and dataset, 5 or 1).",
            positive=True),
    Setting("simultaneous_updates", "bool", "Take the discriminator's and the "
            "generator-encoder's gradients from one forward pass and apply both (authors' 1:1 "
            "mode; needs --d_steps=1; default per method and dataset)."),
    Setting("instance_noise", "float", "Std of the Gaussian noise added to every image the "
            "discriminator sees, at the start of training (default 0.1).", default=0.1,
            non_negative=True),
    Setting("noise_schedule", "enum", "How the instance noise decays per epoch: linear to 0 "
            "at the end (authors' code, the default) or exponential to 1% of its start (GALI "
            "paper text).", default="linear", choices=NOISE_SCHEDULES),
)
ALICE_SETTINGS = (
    Setting("x_recon_weight", "float", "ALICE's weight of its reconstruction term (default "
            "1, 64x64 images 0.02).", non_negative=True),
    Setting("x_recon_loss", "enum", "ALICE's reconstruction loss: l2, mean squared error "
            "(authors' code, the default), or l1.", choices=("l1", "l2")),
)
FEATURE_SETTINGS = (
    Setting("feature_model", "string", "GALI-PT's frozen feature model M: a classifier saved "
            "by `python -m age_tf.classifier` (its model_dir or .keras file), or 'inception' "
            "(InceptionV3 pool features; needs --inception_weights)."),
    Setting("inception_weights", "string", "Local file of Keras InceptionV3 no-top weights "
            "(inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5).", default=""),
)
# Masked encoder inputs: GALI-mix always; the other methods with --masked_inputs
# (the paper's inpainting baselines: ALI, ALICE and GALI-4 "augmented with masked inputs").
MASKED_INPUT_SETTINGS = (
    Setting("masked_inputs", "bool", "Mask every encoder input in training as GALI-mix does "
            "(--mask_*; a fresh rectangle per image and call): the GALI paper's inpainting "
            "baselines. Default off; GALI-mix always masks."),
    Setting("mask_sampler", "enum", "Encoder masks (GALI-mix, --masked_inputs): uniform "
            "rectangles (height and width uniform in 0..--mask_max_size, placed to fit; the "
            "default), authors (their sampler, horizontal range from the height), or central "
            "squares of --mask_max_size.", default="uniform", choices=MASK_SAMPLERS),
    Setting("mask_max_size", "integer", "Encoder masks: largest mask side (default: the image "
            "size, as the paper).", positive=True),
    Setting("mask_fill", "float", "Encoder masks: the value masked pixels of every encoder "
            "input take (default -2, the GALI authors': outside the image range [-1, 1], so "
            "the encoder can tell a hole from black pixels; -1 is black).", default=-2.0),
)

# The authors' schedules (docs/faithfulness.md): batch 100, latent 256, N(0, I).
_SVHN = dict(batch_size=100, latent_dim=256, width=32, prior="gaussian", learning_rate=2e-4,
             epochs=300, d_steps=5, simultaneous_updates=False, lr_decay_epochs=0)
_SVHN_SIMULTANEOUS = dict(_SVHN, epochs=100, d_steps=1, simultaneous_updates=True)
_CELEBA = dict(batch_size=100, latent_dim=256, width=64, prior="gaussian", learning_rate=1e-4,
               epochs=100, d_steps=1, simultaneous_updates=True, lr_decay_epochs=0)
_CELEBA_GALI = dict(_CELEBA, learning_rate=4e-5)
# digits is ours, sized to learn in minutes on a 2-core CPU (docs/datasets.md
# and docs/quality.md have the measurements): a quarter of the SVHN widths,
# M = 8, batch 64, the simultaneous 1:1 schedule of GALI-4 (which needs a
# sixth of the images per generator-encoder update that 5:1 needs), the
# authors' SVHN rate 2e-4, with which GALI-4 reconstructs each image's own
# digit (at 5e-4 its reconstructions were near another image's); each
# method's `digits_epochs` sets the length.
_DIGITS = dict(_SVHN_SIMULTANEOUS, batch_size=64, latent_dim=8, width=8)


class AdversarialInference(base.BidirectionalModel):
  """A generator-encoder pair against a discriminator that classifies tuples.

  Subclasses list the tuple classes (`tuples`) and their element kinds
  (`signature`: "x" image, "z" code, "y" pretrained features). The
  discriminator is trained with the K-way cross-entropy of each class against
  its label; the generator and encoder with `--gali_objective`:

    product:           sum over classes i and wrong classes j of -log D_j(t_i)
    minimax:           minus the discriminator's objective
    misclassification: sum over classes i of -log(1 - D_i(t_i))

  Every objective with m log terms is weighted 2/m (ALI's weight is then 1).
  A discriminator with one logit l (ALI, BiGAN, ALICE) is the two-class case
  with logits (l, 0): D_real = sigmoid(l).
  """

  signature = ("x", "z")
  class_names = ()
  stochastic_encoder = True
  num_logits = None  # default: one per class
  settings = FAMILY_SETTINGS + MASKED_INPUT_SETTINGS
  # Whether the encoder's training inputs are always masked (GALI-mix), whatever
  # --masked_inputs says.
  always_masked = False
  # The digits length: 87 epochs (2,001 steps), by when every method
  # reconstructs each image's own digit and ALI's codes stop gaining the class;
  # longer for methods whose codes need it to pass raw pixels on the SVM protocol.
  digits_epochs = 87

  def __init__(self, config, encoder, generator, discriminator, feature_model=None):
    super().__init__(config, encoder, generator)
    self.discriminator = discriminator
    self.feature_model = feature_model
    self.d_steps = config.d_steps
    self.simultaneous = config.simultaneous_updates
    d_updates_per_step = 1 if self.simultaneous else self.d_steps
    self.discriminator_optimizer = base.adam(config, d_updates_per_step, "discriminator_adam")
    self.generator_encoder_optimizer = base.adam(config, 1, "generator_encoder_adam")
    self.total_epochs = config.train_steps / max(config.steps_per_epoch, 1)

  # -- construction --------------------------------------------------------

  @classmethod
  def create(cls, config, synchronized_bn=False):
    """The method with the ALI/GALI networks for the config's image size."""
    shape = (config.image_size, config.channels, config.latent_dim)
    transposed_conv = cls.transposed_conv(config)
    with base.precision(config):
      encoder = ali_networks.build_encoder(*shape, stochastic=cls.stochastic_encoder,
                                           width=config.width, synchronized_bn=synchronized_bn,
                                           transposed_conv=transposed_conv)
      generator = ali_networks.build_generator(*shape, width=config.width,
                                               synchronized_bn=synchronized_bn,
                                               transposed_conv=transposed_conv)
    feature_model, feature_dim = None, None  # GALI-PT's frozen feature model: float32
    if "y" in cls.signature:
      from age_tf import features  # only GALI-PT needs the feature model
      feature_model = features.load_feature_model(
          config.feature_model, config.image_size, config.channels,
          inception_weights=config.inception_weights or None)
      feature_dim = features.feature_dim(feature_model)
    with base.precision(config):
      discriminator = ali_networks.build_discriminator(
          *shape, signature=cls.signature, num_logits=cls.num_logits or len(cls.class_names),
          width=config.width, feature_dim=feature_dim,
          transposed_conv=transposed_conv)
    # The discriminator's logits are cast to float32 where they are used (class_log_probs).
    return cls(config, base.float32_outputs(encoder), base.float32_outputs(generator),
               discriminator, feature_model)

  @classmethod
  def paper_defaults(cls, spec):
    """The authors' schedule for the dataset (their training scripts), or ours for digits."""
    if spec.name == "digits":
      return dict(_DIGITS, epochs=cls.digits_epochs, **cls.method_defaults(spec))
    if spec.image_size == 64:
      table = _CELEBA_GALI if cls.method_name.startswith("gali") else _CELEBA
      if cls.method_name == "gali_pt":
        table = dict(table, epochs=50, batch_size=20)
    else:
      table = _SVHN if cls.method_name in ("ali", "bigan", "alice", "gali8") else (
          _SVHN_SIMULTANEOUS)
    if spec.name == "svhn":  # every authors' SVHN script trains on the extra split alone
      table = dict(table, svhn_split="extra")
    return dict(table, **cls.method_defaults(spec))

  @classmethod
  def method_defaults(cls, spec):
    """What this method sets on top of the family's schedule for the dataset."""
    return {"masked_inputs": cls.always_masked}

  @classmethod
  def check_settings(cls, values):
    if values["simultaneous_updates"] and values["d_steps"] != 1:
      raise UserError(f"--simultaneous_updates takes both gradients from one forward pass, "
                      f"so it needs --d_steps=1 (got {values['d_steps']}); use --d_steps=1 or "
                      "--nosimultaneous_updates.")
    if cls.always_masked and values["masked_inputs"] is False:
      raise UserError(f"--method={cls.method_name} always masks its encoder inputs; drop "
                      "--nomasked_inputs.")
    if values["mask_max_size"] is None:
      values["mask_max_size"] = values["image_size"]
    if not 0 < values["mask_max_size"] <= values["image_size"]:
      raise UserError(f"--mask_max_size={values['mask_max_size']} must be in 1.."
                      f"{values['image_size']} (the image size).")

  # -- the contract --------------------------------------------------------

  @property
  def batches_per_step(self):
    return self.epoch_batches_per_step(self.config)

  @classmethod
  def epoch_batches_per_step(cls, config):
    """Real batches per step: one per discriminator update and one for the generator-encoder."""
    return 1 if config.simultaneous_updates else config.d_steps + 1

  @property
  def num_classes(self):
    return len(self.class_names)

  @property
  def metric_names(self):
    names = ["discriminator/loss", "generator_encoder/loss", "discriminator/accuracy",
             "discriminator/noise_std"]
    names += [f"discriminator/accuracy/{c}" for c in self.class_names]
    names += [f"confusion/{a}/{b}" for a in self.class_names for b in self.class_names]
    return tuple(names + list(self.extra_metric_names()))

  def extra_metric_names(self):
    return ()

  @property
  def progress_keys(self):
    return ("discriminator/loss", "generator_encoder/loss", "discriminator/accuracy")

  def optimizers(self):
    return {
        "discriminator_optimizer": (self.discriminator_optimizer,
                                    self.discriminator.trainable_variables),
        "generator_encoder_optimizer": (self.generator_encoder_optimizer,
                                        self.generator_encoder_variables),
    }

  @property
  def generator_encoder_variables(self):
    return self.encoder.trainable_variables + self.generator.trainable_variables

  def checkpoint_items(self):
    return dict(super().checkpoint_items(), discriminator=self.discriminator)

  data_dependent_init = True

  def initialize_from_data(self, mean_image):
    """The generator's output bias starts at the data's mean image (authors' code)."""
    ali_networks.initialize_output_bias(self.generator, mean_image)

  # -- encoder and generator -----------------------------------------------

  def encode(self, images, training=False):
    """The code of each image: the encoder's mean for a stochastic encoder."""
    outputs = self.encoder(images, training=training)
    return outputs[:, :self.latent_dim] if self.stochastic_encoder else outputs

  @property
  def masks_encoder_inputs(self):
    # Runs saved before --masked_inputs existed have None: GALI-mix masked, the others not.
    return self.always_masked or bool(self.config.masked_inputs)

  def masks(self, batch_size, rng=None):
    """Encoder masks (B, H, W, 1) of --mask_* (rng: the step's draws unless given)."""
    cfg = self.config
    return masks_lib.sample(rng or self.random, batch_size, cfg.image_size, cfg.mask_max_size,
                            cfg.mask_sampler)

  @property
  def encoder_training_inputs_note(self):
    if self.masks_encoder_inputs:
      return "training images, masked as in training (--mask_*)"
    return super().encoder_training_inputs_note

  def encoder_training_inputs(self, images, rng):
    if not self.masks_encoder_inputs:
      return images
    return masks_lib.apply(images, self.masks(int(images.shape[0]), rng), self.config.mask_fill)

  def sample_codes(self, images, masks=None):
    """E(x) in training: mu + exp(log sigma) * eps with fresh eps for each call.

    With masked encoder inputs the encoder sees `images` masked by `masks`
    (drawn afresh, before eps, when not given).
    """
    if self.masks_encoder_inputs:
      if masks is None:
        masks = self.masks(tf.shape(images)[0])
      images = masks_lib.apply(images, masks, self.config.mask_fill)
    outputs = self.encoder(images, training=True)
    if not self.stochastic_encoder:
      return outputs
    mean, log_sigma = outputs[:, :self.latent_dim], outputs[:, self.latent_dim:]
    return mean + tf.exp(log_sigma) * self.random.normal(tf.shape(mean), dtype=mean.dtype)

  def g(self, codes):
    return self.generator(codes, training=True)

  # -- tuples and the discriminator -----------------------------------------

  def tuples(self, images):
    """The tuple of each class, in class order: a list of lists matching `signature`."""
    raise NotImplementedError

  def noise_std(self):
    """Instance-noise std for this step: --instance_noise decaying over the epochs.

    Epochs count from 1 as in the authors' loop: in epoch e of N the linear
    schedule gives instance_noise * (N - e) / N, so 0.099 in the first epoch
    of 100 and exactly 0 in the last; the exponential one
    instance_noise * EXPONENTIAL_NOISE_END ** (e / N).
    """
    cfg = self.config
    step = tf.cast(self.generator_encoder_optimizer.iterations, tf.float32)
    epoch = tf.floor(step / max(cfg.steps_per_epoch, 1)) + 1.0
    progress = tf.minimum(epoch / self.total_epochs, 1.0)
    if cfg.noise_schedule == "linear":
      return cfg.instance_noise * (1.0 - progress)
    return cfg.instance_noise * tf.pow(EXPONENTIAL_NOISE_END, progress)

  def discriminate(self, class_tuples, noise_std):
    """Log-probabilities (B, C) of every class for each class's tuples, in one D call."""
    inputs = []
    for position, kind in enumerate(self.signature):
      parts = [t[position] for t in class_tuples]
      element = tf.concat(parts, axis=0)
      if kind == "x":
        # Drawn as (classes, batch, ...) so the batch axis is the one replicas split.
        shape = tf.concat([[len(parts)], tf.shape(parts[0])], axis=0)
        noise = self.random.normal(shape, dtype=element.dtype, batch_axis=1)
        element += noise_std * tf.reshape(noise, tf.shape(element))
      inputs.append(element)
    logits = tf.cast(self.discriminator(inputs, training=True), tf.float32)
    return tf.split(class_log_probs(logits), len(class_tuples), axis=0)

  # -- training ------------------------------------------------------------

  def generator_encoder_extra_loss(self, images, class_tuples):
    """Terms added to the generator-encoder objective (ALICE's reconstruction); ({} , 0)."""
    return 0.0, {}

  def _objectives(self, images, noise_std):
    class_tuples = self.tuples(images)
    log_probs = self.discriminate(class_tuples, noise_std)
    d_loss = discriminator_loss(log_probs)
    ge_loss = generator_encoder_loss(log_probs, self.config.gali_objective)
    extra, metrics = self.generator_encoder_extra_loss(images, class_tuples)
    return d_loss, ge_loss + extra, log_probs, metrics

  def train_step(self, images):
    noise_std = self.noise_std()
    if self.simultaneous:
      metrics = self.simultaneous_step(images[0], noise_std)
    else:
      d_losses = [self.discriminator_step(images[i], noise_std) for i in range(self.d_steps)]
      metrics = self.generator_encoder_step(images[self.d_steps], noise_std)
      metrics["discriminator/loss"] = tf.add_n(d_losses) / len(d_losses)
    metrics["discriminator/noise_std"] = noise_std
    return metrics

  def simultaneous_step(self, images, noise_std):
    """Both gradients from one forward pass, then both updates (the authors' 1:1 mode)."""
    with tf.GradientTape(persistent=True) as tape:
      d_loss, ge_loss, log_probs, metrics = self._objectives(images, noise_std)
    self.apply_gradients(self.discriminator_optimizer, tape, d_loss,
                         self.discriminator.trainable_variables)
    self.apply_gradients(self.generator_encoder_optimizer, tape, ge_loss,
                         self.generator_encoder_variables)
    del tape
    metrics.update({"discriminator/loss": d_loss, "generator_encoder/loss": ge_loss},
                   **self._classification_metrics(log_probs))
    return metrics

  def discriminator_step(self, images, noise_std):
    """One discriminator update on fresh tuples (E and G run, but only D learns); its loss."""
    class_tuples = [[tf.stop_gradient(e) for e in t] for t in self.tuples(images)]
    with tf.GradientTape() as tape:
      d_loss = discriminator_loss(self.discriminate(class_tuples, noise_std))
    self.apply_gradients(self.discriminator_optimizer, tape, d_loss,
                         self.discriminator.trainable_variables)
    return d_loss

  def generator_encoder_step(self, images, noise_std):
    """One generator-encoder update; its metrics (the discriminator's view included)."""
    with tf.GradientTape() as tape:
      _, ge_loss, log_probs, metrics = self._objectives(images, noise_std)
    self.apply_gradients(self.generator_encoder_optimizer, tape, ge_loss,
                         self.generator_encoder_variables)
    metrics.update({"generator_encoder/loss": ge_loss},
                   **self._classification_metrics(log_probs))
    return metrics

  def _classification_metrics(self, log_probs):
    """Accuracy per class and the confusion matrix, from the generator-encoder phase's D."""
    metrics, correct = {}, []
    for i, (name, lp) in enumerate(zip(self.class_names, log_probs)):
      predicted = tf.one_hot(tf.argmax(lp[:, :self.num_classes], axis=-1), self.num_classes)
      rates = tf.reduce_mean(predicted, axis=0)
      for j, other in enumerate(self.class_names):
        metrics[f"confusion/{name}/{other}"] = rates[j]
      metrics[f"discriminator/accuracy/{name}"] = rates[i]
      correct.append(rates[i])
    metrics["discriminator/accuracy"] = tf.add_n(correct) / len(correct)
    return metrics

  def write_summaries(self, metrics):
    """The discriminator's confusion matrix as a heatmap image and a text table."""
    names = self.class_names
    matrix = np.array([[metrics[f"confusion/{a}/{b}"] for b in names] for a in names])
    cell = 16
    heat = np.kron(matrix, np.ones((cell, cell)))[:, :, None]
    tf.summary.image("discriminator/confusion", (heat[None] * 255).astype(np.uint8))
    table = io.StringIO()
    table.write("| true \\ predicted | " + " | ".join(names) + " |\n")
    table.write("|---" * (len(names) + 1) + "|\n")
    for a, row in zip(names, matrix):
      table.write(f"| {a} | " + " | ".join(f"{v:.3f}" for v in row) + " |\n")
    tf.summary.text("discriminator/confusion_table", table.getvalue())


def class_log_probs(logits):
  """Per-class log-probabilities: log_softmax, or (log sigmoid(l), log sigmoid(-l)) for one logit."""
  logits = tf.cast(logits, tf.float32)
  if logits.shape[-1] == 1:
    return tf.concat([tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits)], axis=-1)
  return tf.nn.log_softmax(logits, axis=-1)


def discriminator_loss(log_probs):
  """K-way cross-entropy of each class's tuples against its label, weighted 2/K."""
  num_classes = len(log_probs)
  terms = [-tf.reduce_mean(lp[:, i]) for i, lp in enumerate(log_probs)]
  return 2.0 / num_classes * tf.add_n(terms)


def generator_encoder_loss(log_probs, objective):
  """The generator-encoder objective over the classes' log-probabilities (see the class doc)."""
  num_classes = len(log_probs)
  if objective == "product":
    terms = [-tf.reduce_mean(lp[:, j]) for i, lp in enumerate(log_probs)
             for j in range(num_classes) if j != i]
  elif objective == "minimax":
    terms = [tf.reduce_mean(lp[:, i]) for i, lp in enumerate(log_probs)]
  elif objective == "misclassification":
    terms = [-tf.reduce_mean(_log_not(lp, i)) for i, lp in enumerate(log_probs)]
  else:
    raise ValueError(f"Unknown objective {objective!r}; valid: {OBJECTIVES}.")
  return 2.0 / len(terms) * tf.add_n(terms)


def _log_not(log_probs, i):
  """log(1 - p_i) from log-probabilities, stably: logsumexp of the other classes."""
  others = tf.concat([log_probs[:, :i], log_probs[:, i + 1:]], axis=-1)
  return tf.reduce_logsumexp(others, axis=-1)


# ------------------------------------------------------------------ methods


class ALI(AdversarialInference):
  """ALI (Dumoulin et al. 2017): (x, E(x)) against (G(z), z), stochastic encoder."""

  method_name = "ali"
  class_names = ("x_ex", "gz_z")
  num_logits = 1

  def tuples(self, images):
    z = self.sample_prior(tf.shape(images)[0])
    return [[images, self.sample_codes(images)], [self.g(z), z]]


class BiGAN(ALI):
  """BiGAN (Donahue et al. 2017): ALI with a deterministic encoder."""

  method_name = "bigan"
  stochastic_encoder = False


class ALICE(ALI):
  """ALICE (Li et al. 2017): ALI plus w * mean squared error between x and G(E(x))."""

  method_name = "alice"
  settings = FAMILY_SETTINGS + MASKED_INPUT_SETTINGS + ALICE_SETTINGS

  @classmethod
  def method_defaults(cls, spec):
    # The authors' weights: 1 for SVHN (and our 32x32 sets), 0.02 for CelebA.
    return dict(super().method_defaults(spec),
                x_recon_weight=0.02 if spec.image_size == 64 else 1.0, x_recon_loss="l2")

  def extra_metric_names(self):
    return ("generator_encoder/x_recon",)

  def generator_encoder_extra_loss(self, images, class_tuples):
    codes = class_tuples[0][1]  # the sampled E(x) of the (x, E(x)) class
    x_recon = divergences.reconstruction_loss(images, self.g(codes), self.config.x_recon_loss)
    return self.config.x_recon_weight * x_recon, {"generator_encoder/x_recon": x_recon}


class GALI4(AdversarialInference):
  """GALI-4: the real chain x -> E(x) -> G(E(x)) -> E(G(E(x))) and the fake chain from z."""

  method_name = "gali4"
  class_names = ("x_ex", "x_egex", "gz_z", "gegz_z")
  # 218 epochs (5,014 steps): at 2,000-4,000 steps its features are level with
  # raw pixels on the SVM protocol; at 5,000 they pass them (docs/quality.md).
  digits_epochs = 218

  def chains(self, images):
    z = self.sample_prior(tf.shape(images)[0])
    e = self.sample_codes(images)
    x_recon = self.g(e)
    f = self.g(z)
    f_recon = self.g(self.sample_codes(f))
    return z, e, x_recon, f, f_recon

  def tuples(self, images):
    z, e, x_recon, f, f_recon = self.chains(images)
    return [[images, e], [images, self.sample_codes(x_recon)], [f, z], [f_recon, z]]


class GALI8(AdversarialInference):
  """GALI-8: 4-tuples (image, code, image, code) of both chains, shared D(x) and D(z) towers."""

  method_name = "gali8"
  signature = ("x", "z", "x", "z")
  class_names = ("x_e_xr_er", "x_er_xr_e", "xr_e_x_er", "xr_er_x_e",
                 "f_z_fr_ef", "f_ef_fr_z", "fr_z_f_ef", "fr_ef_f_z")
  # 174 epochs (4,002 steps): at 2,000 steps its features are level with its
  # untrained networks' on the SVM protocol, at 4,000 past raw pixels.
  digits_epochs = 174

  def tuples(self, x):
    z = self.sample_prior(tf.shape(x)[0])
    e = self.sample_codes(x)
    xr = self.g(e)
    er = self.sample_codes(xr)
    f = self.g(z)
    ef = self.sample_codes(f)
    fr = self.g(ef)
    return [[x, e, xr, er], [x, er, xr, e], [xr, e, x, er], [xr, er, x, e],
            [f, z, fr, ef], [f, ef, fr, z], [fr, z, f, ef], [fr, ef, f, z]]


class GALIPT(GALI4):
  """GALI-PT: GALI-4 tuples with y = M(image) of a frozen pretrained feature model M.

  The classes are (x, E(x), M(x)), (x, E(G(E(x))), M(G(E(x)))), (G(z), z, M(G(z)))
  and (G(E(G(z))), z, M(G(z))), as in the paper's text and the authors' SVHN
  and CelebA scripts: the second class carries the features of the
  reconstruction, the feature-level reconstructive feedback. Gradients flow
  through M into G and E; M is never updated.
  """

  method_name = "gali_pt"
  signature = ("x", "z", "y")
  digits_epochs = 87  # GALI-4's chains, but its features pass raw pixels by 2,000 steps
  settings = FAMILY_SETTINGS + MASKED_INPUT_SETTINGS + FEATURE_SETTINGS

  @classmethod
  def check_settings(cls, values):
    super().check_settings(values)
    model = values["feature_model"]
    if not model:
      raise UserError("--method=gali_pt needs --feature_model: a classifier trained with "
                      "`python -m age_tf.classifier --dataset=... --model_dir=DIR` (pass DIR), "
                      "or 'inception' with --inception_weights=FILE.")
    if model != "inception" and not os.path.exists(model):
      raise UserError(f"--feature_model={model} does not exist; train one with "
                      "`python -m age_tf.classifier --dataset=... --model_dir=DIR`.")

  def features(self, images):
    return self.feature_model(images, training=False)

  def tuples(self, images):
    z, e, x_recon, f, f_recon = self.chains(images)
    y_real, y_recon, y_fake = self.features(images), self.features(x_recon), self.features(f)
    return [[images, e, y_real], [images, self.sample_codes(x_recon), y_recon],
            [f, z, y_fake], [f_recon, z, y_fake]]


class GALIMix(AdversarialInference):
  """GALI-mix: the encoder sees masked images; mixed images add four classes (8 in all).

  z1 = E(mask(x)), r = G(z1), mix = x outside the rectangle and r inside,
  z2 = E(mask(r)), z3 = E(mask(mix)), zf = E(mask(G(z))); every mask is drawn
  afresh.
  """

  method_name = "gali_mix"
  class_names = ("x_z1", "x_z2", "r_z3", "mix_z1", "gz_z", "gzf_z", "mix_z2", "x_z3")
  always_masked = True
  # 218 epochs (5,014 steps), as GALI-4: at 2,000 steps its features are level
  # with raw pixels on the SVM protocol and it inpaints worse than pasting the
  # mean image; at 5,014 it does better on both (docs/quality.md).
  digits_epochs = 218

  def masked_codes(self, images):
    masks = self.masks(tf.shape(images)[0])
    return self.sample_codes(images, masks), masks

  def tuples(self, x):
    z = self.sample_prior(tf.shape(x)[0])
    z1, m1 = self.masked_codes(x)
    r = self.g(z1)
    mix = x * (1.0 - m1) + r * m1
    z2, _ = self.masked_codes(r)
    z3, _ = self.masked_codes(mix)
    f = self.g(z)
    zf, _ = self.masked_codes(f)
    return [[x, z1], [x, z2], [r, z3], [mix, z1], [f, z], [self.g(zf), z], [mix, z2], [x, z3]]


METHODS = {m.method_name: m for m in (ALI, BiGAN, ALICE, GALI4, GALI8, GALIPT, GALIMix)}
