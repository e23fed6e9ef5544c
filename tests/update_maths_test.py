"""The maths of every update, restated from the networks' raw outputs.

Each method test runs one real, eager training step of a small model (digits,
M = 4, width 4, batch 8) whose optimizers are replaced by plain SGD that
records, for every update it applies, the gradient it was given and every
network's variables before and after; the step's random draws are recorded
too. The test then restates, in plain TensorFlow ops on the networks' own
outputs (never the library's loss functions), the objective each update must
descend, takes its gradient with its own tape, and checks that

* the update applied minus that gradient (to TOL, relative) to its networks,
  the weights became exactly w - rate * gradient, and every other network's
  trainable weights stayed bit for bit: a climbing update, a wrong term, sign
  or weight, a gradient path cut or opened, other inputs or noise all give
  another gradient;
* a small step along the recorded update lowers the restated objective
  (compared with the same step against it).

The objectives are computed in float64 from the networks' float32 outputs,
so that the descent check resolves small changes.

The restatement calls the networks as training does: each encoder and
generator call on its own with training=True (BatchNorm on that call's batch
statistics; the calls also move the moving statistics, which no gradient
sees), and the discriminator once per update on every class's tuples
concatenated along the batch (it has no batch statistics). Its spectral norm
does one power iteration per training call; every restatement starts from
the full recorded state (weights, BatchNorm statistics and the vectors u) the
step had before the update's forward pass, so the normalised weights agree.

The restatement reuses the step's draws, in the order the step makes them
(each stochastic encoder call draws its eps of shape (B, M) when called):
  AGE:       z (B, M) of the encoder update, then z of each generator update.
  ALI, ALICE: z, eps of E(x); BiGAN: z.
  GALI-4, GALI-PT: z, eps of E(x), of E(G(z)), of E(G(E(x))).
  GALI-8:    z, eps of E(x), of E(x'), of E(f).
  GALI-mix:  z, then per encoder input x, r, mix, G(z): its mask (four
             uniform (B,) draws: height, width, top, left) and its eps.
  --masked_inputs: each encoder call draws its mask (as GALI-mix's) before its eps.
  Then the instance noise: one normal (K, B, H, W, C) draw per image position
  of the signature, row k for class k.
A 5:1 step makes its discriminator updates' draws first, in order, then the
generator-encoder update's.
"""

import dataclasses
import functools

import keras
import numpy as np
import pytest
import tensorflow as tf

from age_tf import config as config_lib
from age_tf import data
from age_tf import features
from age_tf.methods import METHODS
from age_tf.networks import ali as ali_networks
from age_tf.networks import dcgan

SIZE, BATCH, LATENT, WIDTH, SEED = 32, 8, 4, 4, 3
# Relative distance allowed between an update and minus the restated gradient
# (both are computed from the same numbers in another order: they agree to
# about 1e-6).
TOL = 1e-4
ALI_FAMILY = ("ali", "bigan", "alice", "gali4", "gali8", "gali_pt", "gali_mix")


# ------------------------------------------------------------------ the data


@functools.lru_cache(maxsize=None)
def _digits(count):
  return data.test_images(data.get_spec("digits"), count).numpy()


def real_batches(count):
  """`count` batches of BATCH distinct real digits, (count, BATCH, 32, 32, 1) in [-1, 1]."""
  return tf.constant(_digits(count * BATCH).reshape(count, BATCH, SIZE, SIZE, 1))


@pytest.fixture(scope="module")
def feature_model_path(tmp_path_factory):
  """A small untrained classifier of age_tf's kind as GALI-PT's feature model M, its feature
  layer scaled by 100 so the features are of order 1 as a trained one's (untrained, about
  0.01: the path through M would then carry 0.2% of G's gradient instead of a quarter)."""
  keras.utils.set_random_seed(0)
  path = str(tmp_path_factory.mktemp("features") / "classifier.keras")
  classifier = features.build_classifier(SIZE, 1, 10, feature_dim=12)
  kernel = classifier.get_layer(features.FEATURES_LAYER).kernel
  kernel.assign(kernel * 100.0)
  classifier.save(path)
  return path


# ------------------------------------------------------ recording a real step


class RecordingDraws:
  """Delegates to the step's own draws (base.StepDraws) and keeps each, in order."""

  def __init__(self, inner):
    self.inner = inner
    self.draws = []

  def normal(self, shape, dtype=tf.float32, batch_axis=0):
    value = self.inner.normal(shape, dtype=dtype, batch_axis=batch_axis)
    self.draws.append(("normal", value))
    return value

  def uniform(self, shape, dtype=tf.float32, batch_axis=0):
    value = self.inner.uniform(shape, dtype=dtype, batch_axis=batch_axis)
    self.draws.append(("uniform", value))
    return value


class Draws:
  """The recorded draws handed to a restatement in order, each checked for kind and shape."""

  def __init__(self, recorded, start=0):
    self.recorded = recorded
    self.index = start

  def take(self, kind, shape):
    assert self.index < len(self.recorded), (
        f"the step made {len(self.recorded)} draws; the spec needs a {kind} {tuple(shape)} "
        f"draw more")
    got_kind, value = self.recorded[self.index]
    assert (got_kind, tuple(value.shape)) == (kind, tuple(shape)), (
        f"draw {self.index}: the step drew a {got_kind} {tuple(value.shape)}, the spec a "
        f"{kind} {tuple(shape)} (a draw missing, shared or added)")
    self.index += 1
    return value


def networks(model):
  found = {"encoder": model.encoder, "generator": model.generator}
  if getattr(model, "discriminator", None) is not None:
    found["discriminator"] = model.discriminator
  if getattr(model, "feature_model", None) is not None:
    found["feature_model"] = model.feature_model
  return found


def capture(model):
  """{network: (trainable weights, other variables)} as numpy copies."""
  return {name: ([v.numpy().copy() for v in net.trainable_variables],
                 [v.numpy().copy() for v in net.non_trainable_variables])
          for name, net in networks(model).items()}


def restore(model, state):
  for name, net in networks(model).items():
    trainable, other = state[name]
    for variable, value in zip(net.trainable_variables + net.non_trainable_variables,
                               trainable + other):
      variable.assign(value)


@dataclasses.dataclass
class Update:
  """One optimizer update: every network's state before and after, and the gradient it
  applied to each trainable weight of each network (None: not given one)."""
  optimizer: str
  before: dict
  after: dict
  applied: dict

  def moved(self, name):
    """The gradient applied to each trainable weight of network `name` (zero if none)."""
    return [np.zeros_like(b) if g is None else g
            for g, b in zip(self.applied[name], self.before[name][0])]


# The rate of the recording SGD: small enough that five discriminator updates leave it in
# a regime like training's (at rate 1 its logits grow large enough to round the losses).
RATE = 1e-2


class RecordingSGD(keras.optimizers.SGD):
  """Plain SGD (an update moves each weight w to w - RATE g) that records the gradients
  it applies and every network's variables around each update.

  The gradients are recorded as given, not read back from the weight change: a weight
  far larger than its update (a BatchNorm gamma near 1, the output bias) loses most
  digits of it to rounding. check_update checks that w - RATE g is exactly what the
  weights became.
  """

  def __init__(self, name, model, log):
    super().__init__(learning_rate=RATE, name=name)
    # Functions, not the model and list themselves, which Keras's attribute tracking would
    # wrap (a tracked list is a copy).
    self._capture = lambda: capture(model)
    self._networks = lambda: networks(model)
    self._record = log.append

  def apply(self, grads, trainable_variables=None):
    variables = list(trainable_variables if trainable_variables is not None
                     else self._trainable_variables)
    given = {id(v): None if g is None else np.array(g) for g, v in zip(grads, variables)}
    applied = {name: [given.get(id(v)) for v in net.trainable_variables]
               for name, net in self._networks().items()}
    known = {id(v) for net in self._networks().values() for v in net.trainable_variables}
    assert all(i in known for i in given), f"{self.name} updates a variable of no network"
    before = self._capture()
    super().apply(grads, trainable_variables)
    self._record(Update(self.name, before, self._capture(), applied))


OPTIMIZERS = {"age": ("encoder_optimizer", "generator_optimizer"),
              "ali_family": ("discriminator_optimizer", "generator_encoder_optimizer")}


def install_recording_sgd(model):
  """Replaces the method's optimizers by RecordingSGD; returns the shared update log."""
  log = []
  names = OPTIMIZERS["age" if model.method_name == "age" else "ali_family"]
  for name in names:
    setattr(model, name, RecordingSGD(name, model, log))
  model.build_optimizers()
  assert set(model.optimizers()) == set(names)
  for name in names:
    assert model.optimizers()[name][0] is getattr(model, name)
  return log


@dataclasses.dataclass
class Step:
  start: dict
  updates: list
  draws: list
  metrics: dict


def run_step(model, log, images, step=0):
  """One eager train_step within the training loop's step draws, recorded."""
  del log[:]
  start = capture(model)
  with model.step_draws(step):
    recorder = RecordingDraws(model._draws.in_step)  # pylint: disable=protected-access
    model._draws.in_step = recorder  # pylint: disable=protected-access
    metrics = model.train_step(images)
  return Step(start, list(log), recorder.draws, {k: float(v) for k, v in metrics.items()})


# ------------------------------------------------------------ the comparisons


def _flat(arrays):
  return np.concatenate([np.ravel(a) for a in arrays] + [np.zeros(0)]).astype(np.float64)


def restated_gradients(model, state, objective, draws, start, wrt):
  """Restores `state`, evaluates objective(Draws) -> {loss: scalar}, differentiates.

  wrt: {loss: networks whose trainable weights it is differentiated against}.
  Returns ({loss: value}, {loss: {network: [numpy gradients]}}, index past its draws).
  """
  restore(model, state)
  nets = networks(model)
  replay = Draws(draws, start)
  with tf.GradientTape(persistent=True) as tape:
    losses = objective(replay)
  grads = {}
  for loss, names in wrt.items():
    grads[loss] = {}
    for name in names:
      variables = nets[name].trainable_variables
      values = tape.gradient(losses[loss], variables)
      grads[loss][name] = [np.zeros(v.shape, np.float32) if g is None else g.numpy()
                           for g, v in zip(values, variables)]
  del tape
  return {k: float(v) for k, v in losses.items()}, grads, replay.index


def check_update(update, optimizer, expected, label):
  """The update came from `optimizer`, moved each network of `expected` by minus its
  restated gradient, and left every other network's trainable weights unchanged."""
  assert update.optimizer == optimizer, f"{label}: expected an update by {optimizer}, got one " \
                                        f"by {update.optimizer}"
  for name in update.before:
    before, after = update.before[name][0], update.after[name][0]
    # The weights became exactly w - RATE g (float32): the recorded gradients are the update.
    for n, (b, a, g) in enumerate(zip(before, after, update.moved(name))):
      assert np.array_equal(a, b - g * np.float32(RATE)), (
          f"{label}: the {name}'s weight {n} is not w - rate * gradient")
    if name not in expected:
      moved = [n for n, (b, a) in enumerate(zip(before, after)) if not np.array_equal(b, a)]
      assert not moved, f"{label}: the update changed the {name}'s weights {moved}"
      continue
    applied, restated = _flat(update.moved(name)), _flat(expected[name])
    scale = np.linalg.norm(restated)
    assert scale > 0, f"{label}: the restated gradient of the {name} is zero"
    error = np.linalg.norm(applied - restated) / scale
    cosine = applied @ restated / (np.linalg.norm(applied) * scale + 1e-30)
    assert error < TOL, (f"{label}: the gradient applied to the {name} is {error:.3g} "
                         f"(relative) away from the restated one (cosine {cosine:+.4f}, norm "
                         f"ratio {np.linalg.norm(applied) / scale:.4f})")


def check_descent(model, state, update, objective, loss, value, draws, start, label):
  """A small step along the recorded update lowers the restated objective `loss` (its
  `value` at `state`): it ends lower than the same step the other way (a central
  difference: the objective's curvature cannot mask a climbing update's first-order rise)."""
  names = [n for n in update.before if np.linalg.norm(_flat(update.moved(n))) > 0]
  assert names, f"{label}: the update moved nothing"
  moved = np.linalg.norm(np.concatenate([_flat(update.moved(n)) for n in names]))
  # Along the gradient g a step r g changes the loss by about r |g|^2: here 1e-6 of it,
  # far above the rounding of the float32 network outputs the (float64) objective sees.
  rate = 1e-6 * max(abs(value), 1.0) / moved ** 2

  def stepped(sign):
    restore(model, {n: ([w - sign * rate * g for w, g in zip(state[n][0], update.moved(n))]
                        if n in names else state[n][0], state[n][1]) for n in state})
    return float(objective(Draws(draws, start))[loss])

  along, against = stepped(1.0), stepped(-1.0)
  assert along < against, (f"{label}: {loss} is {along} a step along the update, {against} "
                           f"a step against it")


def check_metric(step, name, value, label):
  assert step.metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{label}: {name}"


# ---------------------------------------------------------------------- AGE


def f64(tensor):
  return tf.cast(tensor, tf.float64)


def moments_kl(codes):
  """The AGE estimator of KL(codes || N(0, I)): per dimension j with batch mean m_j and
  biased batch variance v_j, (v_j^2 + m_j^2) / 2 - log v_j - 1/2, averaged over j."""
  codes = tf.cast(codes, tf.float64)
  mean = tf.reduce_mean(codes, axis=0)
  var = tf.reduce_mean(tf.square(codes - mean), axis=0)
  return tf.reduce_mean((tf.square(var) + tf.square(mean)) / 2.0 - tf.math.log(var) - 0.5)


def age_model(**overrides):
  values = dict(method="age", dataset="digits", latent_dim=LATENT, width=WIDTH,
                batch_size=BATCH, seed=SEED)
  values.update(overrides)
  keras.utils.set_random_seed(SEED)
  model = METHODS["age"].create(config_lib.resolve(values))
  return model, install_recording_sgd(model)


def test_age_encoder_and_generator_updates():
  """Encoder: KL(e(x)) - KL(e(g(z))) + mu L1(x, g(e(x))), g(z) detached, only e moves.
  Generator (twice, each its own z): KL(e(g(z))) + lambda (2 - mean(z e(g(z)))), the
  gradient through e, only g moves. Codes and z on the unit sphere."""
  model, log = age_model()
  cfg = model.config
  assert (cfg.prior, cfg.generator_steps, cfg.x_recon_loss, cfg.z_recon_loss) == (
      "sphere", 2, "l1", "cos")
  mu, lam = cfg.x_recon_weight, cfg.z_recon_weight
  assert mu > 0 and lam > 0
  images = real_batches(1)
  step = run_step(model, log, images)
  assert [u.optimizer for u in step.updates] == [
      "encoder_optimizer", "generator_optimizer", "generator_optimizer"]
  x = images[0]
  E = lambda v: model.encoder(v, training=True)
  G = lambda v: model.generator(v, training=True)

  def prior(draws):
    return tf.math.l2_normalize(draws.take("normal", (BATCH, LATENT)), axis=-1)

  def encoder_objective(draws):
    fake = tf.stop_gradient(G(prior(draws)))
    real_codes = E(x)
    np.testing.assert_allclose(np.linalg.norm(real_codes, axis=1), 1.0, rtol=1e-5)
    recon = tf.reduce_mean(tf.abs(f64(x) - f64(G(real_codes))))
    return {"encoder": moments_kl(real_codes) - moments_kl(E(fake)) + mu * recon}

  def generator_objective(draws):
    z = prior(draws)
    codes = E(G(z))
    cosine = tf.reduce_mean(f64(z) * f64(codes))
    return {"generator": moments_kl(codes) + lam * (2.0 - cosine)}

  # The encoder update, from the step's starting weights.
  losses, grads, index = restated_gradients(model, step.start, encoder_objective, step.draws,
                                            0, {"encoder": ["encoder"]})
  check_update(step.updates[0], "encoder_optimizer", grads["encoder"], "AGE encoder")
  check_metric(step, "encoder/loss", losses["encoder"], "AGE encoder")
  check_descent(model, step.start, step.updates[0], encoder_objective, "encoder",
                losses["encoder"], step.draws, 0, "AGE encoder")
  # Each generator update from the weights the previous update left.
  generator_losses = []
  for k in (1, 2):
    state, start = step.updates[k - 1].after, index
    losses, grads, index = restated_gradients(model, state, generator_objective, step.draws,
                                              start, {"generator": ["generator"]})
    label = f"AGE generator update {k}"
    check_update(step.updates[k], "generator_optimizer", grads["generator"], label)
    check_descent(model, state, step.updates[k], generator_objective, "generator",
                  losses["generator"], step.draws, start, label)
    generator_losses.append(losses["generator"])
  assert index == len(step.draws), "the step made draws the spec does not"
  check_metric(step, "generator/loss", np.mean(generator_losses), "AGE generator")


def test_age_terms_small_at_the_defaults():
  """At the digits defaults mu L1 carries 0.6% of the encoder's gradient (against
  KL(e(g(z))) of a fresh generator's nearly equal images) and lambda's term most of the
  generator's. Here mu = 1000 makes L1 a third of the encoder's update and lambda = 0 leaves
  KL(e(g(z))) alone in the generator's, its gradient reaching g through e."""
  model, log = age_model(x_recon_weight=1000.0, z_recon_weight=0.0)
  images = real_batches(1)
  step = run_step(model, log, images)
  x = images[0]
  E = lambda v: model.encoder(v, training=True)
  G = lambda v: model.generator(v, training=True)
  prior = lambda draws: tf.math.l2_normalize(draws.take("normal", (BATCH, LATENT)), axis=-1)

  def encoder_objective(draws):
    fake = tf.stop_gradient(G(prior(draws)))
    real_codes = E(x)
    recon = tf.reduce_mean(tf.abs(f64(x) - f64(G(real_codes))))
    return {"encoder": moments_kl(real_codes) - moments_kl(E(fake)) + 1000.0 * recon}

  _, grads, _ = restated_gradients(model, step.start, encoder_objective, step.draws, 0,
                                   {"encoder": ["encoder"]})
  check_update(step.updates[0], "encoder_optimizer", grads["encoder"], "AGE encoder, mu 1000")
  _, grads, _ = restated_gradients(model, step.updates[0].after,
                                   lambda draws: {"generator": moments_kl(E(G(prior(draws))))},
                                   step.draws, 1, {"generator": ["generator"]})
  check_update(step.updates[1], "generator_optimizer", grads["generator"],
               "AGE generator, KL term alone")


# ------------------------------------------------------------- the ALI family


SIGNATURES = {"gali8": "xzxz", "gali_pt": "xzy"}
NUM_CLASSES = {"ali": 2, "bigan": 2, "alice": 2, "gali4": 4, "gali8": 8, "gali_pt": 4,
               "gali_mix": 8}


def ali_model(method, feature_model_path=None, **overrides):
  values = dict(method=method, dataset="digits", latent_dim=LATENT, width=WIDTH,
                batch_size=BATCH, seed=SEED)
  if method == "gali_pt":
    values["feature_model"] = feature_model_path
  values.update(overrides)
  keras.utils.set_random_seed(SEED)
  model = METHODS[method].create(config_lib.resolve(values))
  log = install_recording_sgd(model)
  # The generator's output bias starts at the mean image, as the training loop does.
  model.initialize_from_data(tf.reduce_mean(real_batches(1)[0], axis=0))
  return model, log


def spec_noise_std(config, generator_encoder_updates):
  """instance_noise * (N - e) / N in epoch e = 1..N of N (linear schedule)."""
  assert config.noise_schedule == "linear"
  total = config.train_steps / config.steps_per_epoch
  epoch = generator_encoder_updates // config.steps_per_epoch + 1
  return config.instance_noise * max(total - epoch, 0.0) / total


def spec_masks(draws, batch, config):
  """Uniform rectangles: height and width uniform in 0..max, the corner so it fits."""
  size, biggest = config.image_size, config.mask_max_size

  def integer(high):  # uniform in 0..high, per sample
    u = draws.take("uniform", (batch,)).numpy()
    return np.minimum(np.floor(u * (np.asarray(high, np.float32) + np.float32(1))), high)

  height, width = integer(biggest), integer(biggest)
  top, left = integer(size - height), integer(size - width)
  pixels = np.arange(size)
  rows = (pixels >= top[:, None]) & (pixels < (top + height)[:, None])
  cols = (pixels >= left[:, None]) & (pixels < (left + width)[:, None])
  return tf.constant((rows[:, :, None] & cols[:, None, :])[..., None])


def spec_tuples(method, model, x, draws):
  """The classes' tuples (README's methods table) and the sampled code of E(x)."""
  cfg = model.config
  batch = x.shape[0]
  G = lambda codes: model.generator(codes, training=True)
  M = lambda images: model.feature_model(images, training=False)

  def E(images, masks=None):
    if cfg.masked_inputs:  # a fresh rectangle per image and call, drawn before eps
      masks = spec_masks(draws, batch, cfg) if masks is None else masks
      images = tf.where(masks, tf.cast(cfg.mask_fill, tf.float32), images)
    outputs = model.encoder(images, training=True)
    if method == "bigan":  # deterministic
      assert outputs.shape[-1] == LATENT
      return outputs
    assert outputs.shape[-1] == 2 * LATENT  # mu, log sigma
    eps = draws.take("normal", (batch, LATENT))
    return outputs[:, :LATENT] + tf.exp(outputs[:, LATENT:]) * eps

  z = draws.take("normal", (batch, LATENT))
  assert cfg.prior == "gaussian"
  if method in ("ali", "bigan", "alice"):
    e = E(x)
    return [[x, e], [G(z), z]], e
  if method in ("gali4", "gali_pt"):
    e = E(x)
    xr = G(e)
    f = G(z)
    fr = G(E(f))
    er = E(xr)
    classes = [[x, e], [x, er], [f, z], [fr, z]]
    if method == "gali_pt":  # M(x), M(G(E(x))), M(G(z)), M(G(z))
      for tuple_, y in zip(classes, [M(x), M(xr), M(f), M(f)]):
        tuple_.append(y)
    return classes, e
  if method == "gali8":
    e = E(x)
    xr = G(e)
    er = E(xr)
    f = G(z)
    ef = E(f)
    fr = G(ef)
    return [[x, e, xr, er], [x, er, xr, e], [xr, e, x, er], [xr, er, x, e],
            [f, z, fr, ef], [f, ef, fr, z], [fr, z, f, ef], [fr, ef, f, z]], e
  assert method == "gali_mix" and cfg.masked_inputs

  def masked_code(images):
    masks = spec_masks(draws, batch, cfg)
    return E(images, masks), masks

  z1, m1 = masked_code(x)
  r = G(z1)
  mix = tf.where(m1, r, x)  # x outside the rectangle, r inside
  z2, _ = masked_code(r)
  z3, _ = masked_code(mix)
  f = G(z)
  zf, _ = masked_code(f)
  return [[x, z1], [x, z2], [r, z3], [mix, z1], [f, z], [G(zf), z], [mix, z2], [x, z3]], z1


def spec_log_probs(method, model, classes, noise_std, draws):
  """Each class's log-probabilities of every class, from one discriminator call on the
  concatenated tuples, each image element of each class with its own noise."""
  count = len(classes)
  assert count == NUM_CLASSES[method]
  inputs = []
  for position, kind in enumerate(SIGNATURES.get(method, "xz")):
    parts = [tuple_[position] for tuple_ in classes]
    if kind == "x":
      noise = draws.take("normal", (count,) + tuple(parts[0].shape))
      parts = [part + noise_std * noise[k] for k, part in enumerate(parts)]
    inputs.append(tf.concat(parts, axis=0))
  # The objectives are computed in float64 from the float32 logits: their values then
  # resolve the small changes the descent check makes.
  logits = tf.cast(model.discriminator(inputs, training=True), tf.float64)
  if count == 2:  # one logit l: D_real = sigmoid(l)
    assert logits.shape[-1] == 1
    log_probs = tf.concat([-tf.nn.softplus(-logits), -tf.nn.softplus(logits)], axis=1)
  else:
    assert logits.shape[-1] == count
    log_probs = logits - tf.reduce_logsumexp(logits, axis=1, keepdims=True)
  return tf.split(log_probs, count, axis=0)


def spec_objectives(method, model, x, noise_std, draws, generator_encoder=True):
  """{"discriminator": 2/K sum_i -mean log D_i(t_i), "generator_encoder": the objective}."""
  cfg = model.config
  classes, e = spec_tuples(method, model, x, draws)
  lp = spec_log_probs(method, model, classes, noise_std, draws)
  k = len(lp)
  mean = tf.reduce_mean
  d = 2.0 / k * tf.add_n([-mean(lp[i][:, i]) for i in range(k)])
  losses = {"discriminator": d}
  if not generator_encoder:
    return losses
  if cfg.gali_objective == "product":
    terms = [-mean(lp[i][:, j]) for i in range(k) for j in range(k) if j != i]
    assert len(terms) == k * (k - 1)
    ge = 2.0 / len(terms) * tf.add_n(terms)
  elif cfg.gali_objective == "minimax":
    ge = -d
  else:
    assert cfg.gali_objective == "misclassification"
    ge = 2.0 / k * tf.add_n([-mean(tf.math.log1p(-tf.exp(lp[i][:, i]))) for i in range(k)])
  if method == "alice":  # w * MSE(x, G(E(x))), E(x) the (x, E(x)) class's sampled code
    recon = tf.cast(model.generator(e, training=True), tf.float64)
    ge += cfg.x_recon_weight * mean(tf.square(tf.cast(x, tf.float64) - recon))
  losses["generator_encoder"] = ge
  return losses


GE = ["encoder", "generator"]


def check_simultaneous_step(method, model, log, label):
  """One forward pass: D descends its loss, E and G theirs, both from the same weights."""
  assert model.config.simultaneous_updates and model.batches_per_step == 1
  images = real_batches(1)
  noise_std = spec_noise_std(model.config, 0)
  assert noise_std > 0
  step = run_step(model, log, images)
  assert sorted(u.optimizer for u in step.updates) == [
      "discriminator_optimizer", "generator_encoder_optimizer"]
  updates = {u.optimizer: u for u in step.updates}
  objective = lambda draws: spec_objectives(method, model, images[0], noise_std, draws)
  losses, grads, index = restated_gradients(
      model, step.start, objective, step.draws, 0,
      {"discriminator": ["discriminator"], "generator_encoder": GE})
  assert index == len(step.draws), "the step made draws the spec does not"
  check_update(updates["discriminator_optimizer"], "discriminator_optimizer",
               grads["discriminator"], f"{label} discriminator")
  check_update(updates["generator_encoder_optimizer"], "generator_encoder_optimizer",
               grads["generator_encoder"], f"{label} generator-encoder")
  check_metric(step, "discriminator/loss", losses["discriminator"], label)
  check_metric(step, "generator_encoder/loss", losses["generator_encoder"], label)
  check_metric(step, "discriminator/noise_std", noise_std, label)
  for name, loss in [("discriminator_optimizer", "discriminator"),
                     ("generator_encoder_optimizer", "generator_encoder")]:
    check_descent(model, step.start, updates[name], objective, loss, losses[loss], step.draws,
                  0, f"{label} {loss}")
  return step


# Each method's recorded 1:1 step, for the instance-noise test to reuse.
_SIMULTANEOUS_STEPS = {}


def simultaneous_step(method, feature_model_path=None):
  """A checked 1:1 step of `method` with the product objective: (model, Step)."""
  if method not in _SIMULTANEOUS_STEPS:
    overrides = dict(simultaneous_updates=True, d_steps=1)
    if method == "gali_mix":
      overrides["mask_fill"] = -1.5  # neither -1 nor the default -2: the fill is the config's
    model, log = ali_model(method, feature_model_path, **overrides)
    assert model.config.gali_objective == "product"
    if method == "alice":
      assert model.config.x_recon_weight == 1.0 and model.config.x_recon_loss == "l2"
    _SIMULTANEOUS_STEPS[method] = model, check_simultaneous_step(method, model, log, method)
  return _SIMULTANEOUS_STEPS[method]


@pytest.mark.parametrize("method", ALI_FAMILY)
def test_simultaneous_updates(method, feature_model_path):
  """Every method's 1:1 step: the K-way cross-entropy for D, the product objective for
  E and G (ALICE: plus its reconstruction), instance noise per class and image."""
  simultaneous_step(method, feature_model_path)


@pytest.mark.parametrize("method", ["ali", "alice", "gali4"])
def test_masked_encoder_inputs(method):
  """--masked_inputs (the paper's inpainting baselines): every encoder input of the tuples
  (ALICE's reconstruction term included) is masked to --mask_fill, a fresh rectangle per
  image and call; the rest of the step is the method's."""
  model, log = ali_model(method, masked_inputs=True, mask_fill=-1.5, simultaneous_updates=True,
                         d_steps=1)
  assert model.masks_encoder_inputs
  check_simultaneous_step(method, model, log, f"{method} masked")


@pytest.mark.parametrize("objective", ["minimax", "misclassification"])
def test_objective_variants(objective):
  method = "gali4"
  model, log = ali_model(method, gali_objective=objective, simultaneous_updates=True,
                         d_steps=1)
  check_simultaneous_step(method, model, log, f"{method} {objective}")


@pytest.mark.parametrize("method", ["ali", "gali8"])
def test_five_to_one_updates(method):
  """d_steps=5: five D updates, each on its own batch with E and G fixed, from the weights
  the previous one left; then one E-G update on the sixth batch. Mid-run (epoch 3 of the
  method's digits default: ALI 87, GALI-8 174) so the noise is that epoch's."""
  model, log = ali_model(method, d_steps=5, simultaneous_updates=False)
  cfg = model.config
  assert model.batches_per_step == 6
  epochs = {"ali": 87, "gali8": 174}[method]
  done = 2 * cfg.steps_per_epoch + 5  # generator-encoder updates so far: epoch 3
  model.generator_encoder_optimizer.iterations.assign(done)
  noise_std = spec_noise_std(cfg, done)
  assert cfg.train_steps == epochs * cfg.steps_per_epoch
  assert noise_std == pytest.approx(cfg.instance_noise * (epochs - 3) / epochs)
  images = real_batches(6)
  step = run_step(model, log, images, step=done)
  assert [u.optimizer for u in step.updates] == (
      ["discriminator_optimizer"] * 5 + ["generator_encoder_optimizer"])
  index, d_losses = 0, []
  for k in range(5):
    state = step.start if k == 0 else step.updates[k - 1].after
    objective = functools.partial(
        lambda batch, draws: spec_objectives(method, model, batch, noise_std, draws,
                                             generator_encoder=False), images[k])
    start = index
    losses, grads, index = restated_gradients(model, state, objective, step.draws, start,
                                              {"discriminator": ["discriminator"]})
    label = f"{method} 5:1 discriminator update {k + 1}"
    check_update(step.updates[k], "discriminator_optimizer", grads["discriminator"], label)
    if k == 0:
      check_descent(model, state, step.updates[k], objective, "discriminator",
                    losses["discriminator"], step.draws, start, label)
    d_losses.append(losses["discriminator"])
  state, start = step.updates[4].after, index
  objective = lambda draws: spec_objectives(method, model, images[5], noise_std, draws)
  losses, grads, index = restated_gradients(model, state, objective, step.draws, start,
                                            {"generator_encoder": GE})
  label = f"{method} 5:1 generator-encoder update"
  check_update(step.updates[5], "generator_encoder_optimizer", grads["generator_encoder"], label)
  check_descent(model, state, step.updates[5], objective, "generator_encoder",
                losses["generator_encoder"], step.draws, start, label)
  assert index == len(step.draws), "the step made draws the spec does not"
  check_metric(step, "discriminator/loss", np.mean(d_losses), method)
  check_metric(step, "generator_encoder/loss", losses["generator_encoder"], method)


def test_instance_noise_schedule(feature_model_path):
  """Linear: instance_noise * (N - e) / N in epoch e = 1..N, constant within an epoch."""
  values = dict(method="gali4", dataset="digits", latent_dim=LATENT, width=WIDTH,
                batch_size=64, seed=SEED, instance_noise=0.2)
  model = METHODS["gali4"].create(config_lib.resolve(dict(values, train_steps=230)))
  assert model.config.steps_per_epoch == 23  # 10 epochs
  for update, epoch in [(0, 1), (22, 1), (23, 2), (115, 6), (206, 9), (207, 10), (229, 10)]:
    model.generator_encoder_optimizer.iterations.assign(update)
    assert float(model.noise_std()) == pytest.approx(0.2 * (10 - epoch) / 10, abs=1e-7), update
  model.generator_encoder_optimizer.iterations.assign(229)
  assert float(model.noise_std()) == 0.0  # the last epoch has none
  # The digits defaults: 0.1 * (N - 1) / N in the first of N epochs, N = 87 for the
  # family and the method's own length where it sets one (GALI-4 and GALI-mix 218,
  # GALI-8 174; not GALI-PT, whose chains are GALI-4's).
  del values["instance_noise"]
  for method, epochs in [("ali", 87), ("bigan", 87), ("alice", 87), ("gali4", 218),
                         ("gali8", 174), ("gali_pt", 87), ("gali_mix", 218)]:
    extra = {"feature_model": feature_model_path} if method == "gali_pt" else {}
    config = config_lib.resolve(dict(values, method=method, batch_size=8, **extra))
    assert config.instance_noise == 0.1 and config.epochs == epochs, method
    assert config.train_steps == epochs * config.steps_per_epoch, method
    if method == "gali4":
      model = METHODS["gali4"].create(config)
      assert float(model.noise_std()) == pytest.approx(0.1 * (epochs - 1) / epochs)


def test_instance_noise_is_its_own_draw_for_every_class_and_image():
  """GALI-8 has two images per tuple: two (8, B, 32, 32, 1) draws, one row per class. The
  updates tell: restated with no noise, or with one draw shared by the classes, the
  gradients miss the step's updates by far more than TOL."""
  model, step = simultaneous_step("gali8")
  noise = [v for _, v in step.draws if v.shape.rank == 5]
  assert [tuple(v.shape) for v in noise] == [(8, BATCH, SIZE, SIZE, 1)] * 2
  assert not np.allclose(noise[0], noise[1]) and not np.allclose(noise[0][0], noise[0][1])
  noise_std = spec_noise_std(model.config, 0)
  images = real_batches(1)[0]
  objective = lambda draws: spec_objectives("gali8", model, images, noise_std, draws)
  updates = {u.optimizer: u for u in step.updates}
  shared = [(k, v if v.shape.rank != 5 else tf.tile(v[:1], [8, 1, 1, 1, 1]))
            for k, v in step.draws]
  silent = [(k, v if v.shape.rank != 5 else tf.zeros_like(v)) for k, v in step.draws]
  for name, draws in [("shared", shared), ("no noise", silent)]:
    _, grads, _ = restated_gradients(model, step.start, objective, draws, 0,
                                     {"discriminator": ["discriminator"],
                                      "generator_encoder": GE})
    for optimizer, loss in [("discriminator_optimizer", "discriminator"),
                            ("generator_encoder_optimizer", "generator_encoder")]:
      applied = _flat([g for n in grads[loss] for g in updates[optimizer].moved(n)])
      other = _flat([g for n in grads[loss] for g in grads[loss][n]])
      error = np.linalg.norm(other - applied) / np.linalg.norm(applied)
      assert error > 100 * TOL, f"{name}: the {loss} gradient changes by only {error:.2g}"


# ----------------------------------------------------------------- the layers


def _bn(h, layer):
  """Training-mode BatchNorm: batch mean and biased variance, epsilon 1e-5."""
  mean, var = tf.nn.moments(h, axes=list(range(len(h.shape) - 1)))
  return (h - mean) / tf.sqrt(var + 1e-5) * layer.gamma + layer.beta


def _randomise(model, seed):
  """Moves every trainable weight off its initial value (biases and BN betas off 0)."""
  rng = np.random.default_rng(seed)
  for v in model.trainable_variables:
    scale = max(float(np.std(v.numpy())), 0.05)
    v.assign(v.numpy() + rng.normal(0.0, scale, v.shape).astype(np.float32))


def _deconv(h, layer, stride, padding):
  kernel = layer.kernel
  k = kernel.shape[0]
  batch, height, width, _ = h.shape
  if padding == "VALID":
    out = ((height - 1) * stride + k, (width - 1) * stride + k)
  else:
    out = (height * stride, width * stride)
  return tf.nn.conv2d_transpose(h, kernel, (batch,) + out + (kernel.shape[2],), stride, padding)


def dcgan_encoder_forward(encoder, x, size):
  """Convs 4x4/2 'same' (no BN on the first), LeakyReLU 0.2, an output conv with bias
  (32: 4x4/2 'same' then 2x2 average pooling; 64: 4x4/1 'valid'), onto the sphere."""
  h = x
  for i in range(3 if size == 32 else 4):
    h = tf.nn.conv2d(h, encoder.get_layer(f"conv{i}").kernel, 2, "SAME")
    if i > 0:
      h = _bn(h, encoder.get_layer(f"bn{i}"))
    h = tf.nn.leaky_relu(h, alpha=0.2)
  out = encoder.get_layer("conv_out")
  if size == 32:
    h = tf.nn.avg_pool2d(tf.nn.conv2d(h, out.kernel, 2, "SAME") + out.bias, 2, 2, "VALID")
  else:
    h = tf.nn.conv2d(h, out.kernel, 1, "VALID") + out.bias
  h = tf.reshape(h, [h.shape[0], -1])
  return h / tf.norm(h, axis=1, keepdims=True)


def dcgan_generator_forward(generator, z, size):
  """ConvT 4x4/1 'valid', then 4x4/2 'same', each BN + ReLU; 32: a 1x1 conv with bias,
  64: a 4x4/2 'same' convT; tanh."""
  h = tf.reshape(z, [z.shape[0], 1, 1, z.shape[1]])
  for i in range(4):
    h = _deconv(h, generator.get_layer(f"deconv{i}"), 1 if i == 0 else 2,
                "VALID" if i == 0 else "SAME")
    h = tf.nn.relu(_bn(h, generator.get_layer(f"bn{i}")))
  if size == 32:
    out = generator.get_layer("conv_out")
    h = tf.nn.conv2d(h, out.kernel, 1, "VALID") + out.bias
  else:
    h = _deconv(h, generator.get_layer("deconv_out"), 2, "SAME")
  return tf.tanh(h)


@pytest.mark.parametrize("size", [32, 64])
def test_dcgan_networks_restated_layer_by_layer(size):
  """AGE's encoder and generator (training mode) against their restatement: pins every
  slope, activation, pooling and padding."""
  keras.utils.set_random_seed(size)
  encoder = dcgan.build_encoder(size, 3, 5, width=2)
  generator = dcgan.build_generator(size, 3, 5, width=2)
  _randomise(encoder, 1)
  _randomise(generator, 2)
  x = tf.random.stateless_uniform([4, size, size, 3], [size, 1], -1.0, 1.0)
  z = tf.random.stateless_normal([4, 5], [size, 2])
  np.testing.assert_allclose(encoder(x, training=True), dcgan_encoder_forward(encoder, x, size),
                             atol=2e-5)
  np.testing.assert_allclose(generator(z, training=True),
                             dcgan_generator_forward(generator, z, size), atol=2e-5)


ALI_STRIDES = {"encoder": {32: [1, 2, 1, 2, 1], 64: [1, 2, 2, 2, 1]},
               "generator": {32: [1, 2, 1, 2, 1], 64: [1, 2, 2, 2, 1]}}


def ali_encoder_forward(encoder, x, size):
  """Five 'valid' convs, each BN + LeakyReLU (0.01 at 32x32, 0.02 at 64x64); 32x32 a hidden
  dense with BN + LeakyReLU; the output dense with a bias."""
  slope = {32: 0.01, 64: 0.02}[size]
  h = x
  for i, stride in enumerate(ALI_STRIDES["encoder"][size], 1):
    h = tf.nn.conv2d(h, encoder.get_layer(f"conv{i}").kernel, stride, "VALID")
    h = tf.nn.leaky_relu(_bn(h, encoder.get_layer(f"bn{i}")), alpha=slope)
  h = tf.reshape(h, [h.shape[0], -1])
  if size == 32:
    h = tf.nn.leaky_relu(_bn(h @ encoder.get_layer("dense6").kernel, encoder.get_layer("bn6")),
                         alpha=slope)
  out = encoder.get_layer("dense_out")
  return h @ out.kernel + out.bias


def ali_generator_forward(generator, z, size):
  """Five 'valid' convTs (32x32 then a 1x1 conv), each BN + LeakyReLU; a 1x1 conv, the
  per-pixel output bias, tanh."""
  slope = {32: 0.01, 64: 0.02}[size]
  h = tf.reshape(z, [z.shape[0], 1, 1, z.shape[1]])
  index = 0
  for index, stride in enumerate(ALI_STRIDES["generator"][size], 1):
    h = _deconv(h, generator.get_layer(f"deconv{index}"), stride, "VALID")
    h = tf.nn.leaky_relu(_bn(h, generator.get_layer(f"bn{index}")), alpha=slope)
  if size == 32:
    index += 1
    h = tf.nn.conv2d(h, generator.get_layer(f"conv{index}").kernel, 1, "VALID")
    h = tf.nn.leaky_relu(_bn(h, generator.get_layer(f"bn{index}")), alpha=slope)
  h = tf.nn.conv2d(h, generator.get_layer(f"conv{index + 1}").kernel, 1, "VALID")
  return tf.tanh(h + generator.get_layer("output_bias").bias)


def _sn_kernel(layer):
  """W / sigma, sigma = v W u^T with v = u W^T / |u W^T| (the stored u, inference mode)."""
  matrix = tf.reshape(layer.kernel, [-1, layer.kernel.shape[-1]])
  v = tf.math.l2_normalize(layer.u @ tf.transpose(matrix), axis=-1)
  return layer.kernel / tf.reshape(v @ matrix @ tf.transpose(layer.u), [])


def ali_discriminator_forward(disc, inputs, signature, size):
  """Towers D(x) (the encoder's convs, SN, bias, LeakyReLU), D(z) and D(y) (two SN dense +
  LeakyReLU), concatenated in signature order; two SN dense + LeakyReLU; SN logits."""
  slope = {32: 0.01, 64: 0.02}[size]
  dense = lambda h, layer: h @ _sn_kernel(layer) + layer.bias
  features_ = []
  for kind, h in zip(signature, inputs):
    tower = disc.get_layer(f"d_{kind}")
    if kind == "x":
      for i, stride in enumerate(ALI_STRIDES["encoder"][size], 1):
        layer = tower.get_layer(f"conv{i}")
        h = tf.nn.leaky_relu(tf.nn.conv2d(h, _sn_kernel(layer), stride, "VALID") + layer.bias,
                             alpha=slope)
      h = tf.reshape(h, [h.shape[0], -1])
    else:
      for i in (1, 2):
        h = tf.nn.leaky_relu(dense(h, tower.get_layer(f"dense{i}")), alpha=slope)
    features_.append(h)
  h = tf.concat(features_, axis=1)
  for i in (1, 2):
    h = tf.nn.leaky_relu(dense(h, disc.get_layer(f"joint_dense{i}")), alpha=slope)
  return dense(h, disc.get_layer("logits"))


@pytest.mark.parametrize("size", [32, 64])
def test_ali_networks_restated_layer_by_layer(size):
  """The ALI encoder and generator (training mode) and the GALI-PT discriminator (inference)
  against their restatement: pins every slope, activation and stride."""
  keras.utils.set_random_seed(size)
  channels, latent, feature_dim, width = 3, 5, 6, 2
  encoder = ali_networks.build_encoder(size, channels, latent, stochastic=True, width=width)
  generator = ali_networks.build_generator(size, channels, latent, width=width)
  disc = ali_networks.build_discriminator(size, channels, latent, signature=("x", "z", "y"),
                                          num_logits=4, width=width, feature_dim=feature_dim)
  for i, net in enumerate((encoder, generator, disc)):
    _randomise(net, i)
  x = tf.random.stateless_uniform([4, size, size, channels], [size, 1], -1.0, 1.0)
  z = tf.random.stateless_normal([4, latent], [size, 2])
  y = tf.random.stateless_normal([4, feature_dim], [size, 3])
  np.testing.assert_allclose(encoder(x, training=True), ali_encoder_forward(encoder, x, size),
                             atol=2e-5)
  np.testing.assert_allclose(generator(z, training=True),
                             ali_generator_forward(generator, z, size), atol=2e-5)
  logits = disc([x, z, y], training=False)
  np.testing.assert_allclose(logits, ali_discriminator_forward(disc, [x, z, y], "xzy", size),
                             atol=2e-5 * max(1.0, float(tf.reduce_max(tf.abs(logits)))))
