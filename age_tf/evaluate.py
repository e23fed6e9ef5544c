"""Entry point: python -m age_tf.evaluate --model_dir=DIR runs the papers' evaluation protocols and draws the figures.

Writes MODEL_DIR/eval/STEP/metrics.json and PNG figures beside it (STEP is
the checkpoint's step; `untrained` with --untrained), and TensorBoard
summaries under MODEL_DIR/eval. See the README's "Evaluation" section.

Flags shared with training: --feature_model (the features of recon, fid, kid
and inpaint; default on digits: a classifier trained into MODEL_DIR/eval),
--inception_weights, --mask_* (inpainting and the restorations figure;
default: the run's own, else uniform rectangles up to the image size filled
with -1), --data_dir and --bn_statistics* (default: the run's).
"""

import dataclasses
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from age_tf import checkpointing
from age_tf import config as config_lib  # defines --model_dir, --feature_model, --mask_* ...
from age_tf import data
from age_tf import features
from age_tf import figures
from age_tf import files
from age_tf import images as images_lib
from age_tf import inference_statistics
from age_tf.errors import UserError
from age_tf.methods import METHODS
from age_tf.metrics import classifier_distances
from age_tf.metrics import inpainting
from age_tf.metrics import inputs
from age_tf.metrics import reconstruction
from age_tf.metrics import svm

EVAL_DIR = "eval"
CLASSIFIER_DIR = "classifier"
METRICS_FILE = "metrics.json"
# The digits classifier trained when no --feature_model is given: age_tf.classifier's
# defaults (that module's flags clash with training's, so they are restated here).
CLASSIFIER_SETTINGS = dict(batch_size=64, learning_rate=1e-3, feature_dim=512, seed=0)
# Per-dataset defaults: digits is small (1497 train images, about 150 per
# class, 300 test), the others follow the papers.
DEFAULTS = {
    "digits": dict(num_fid_samples=1000, svm_per_class=10, svm_validation=300,
                   svm_grid_size=50),
    "other": dict(num_fid_samples=10000, svm_per_class=svm.PAPER_PER_CLASS,
                  svm_validation=10000, svm_grid_size=svm.PAPER_GRID_SIZE),
}
FIGURES = ("samples", "reconstructions", "interpolations", "restorations", "codes")
# Inpainting's masks when neither --mask_* nor the run gives them.
DEFAULT_MASK_SAMPLER = "uniform"
DEFAULT_MASK_FILL = -1.0


# ---------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How one evaluation runs: evaluate's flags, read once by `settings_from_flags`.

  The defaults are the flags'. None means "not given": the count's
  per-dataset default (DEFAULTS), the run's own value (--mask_*,
  --bn_statistics*, --data_dir, --inception_weights) or evaluate's default
  (--feature_model: the digits classifier; masks: DEFAULT_MASK_*).
  """
  # The --metrics names to compute; None (not given): all, svm skipped when the dataset
  # has no class labels (given, svm on such a dataset is an error).
  metrics: tuple | None = None
  checkpoint: str | None = None  # a step N or a checkpoint path; None: the latest
  untrained: bool = False
  eval_batch_size: int = 100
  eval_seed: int = 0
  num_fid_samples: int | None = None
  kid_block_size: int | None = None
  svm_repeats: int = svm.PAPER_REPEATS
  svm_per_class: int | None = None
  svm_validation: int | None = None
  svm_grid_size: int | None = None
  svm_hidden_layers: int = svm.HIDDEN_LAYERS
  svm_features: str = "activations"  # one of svm.FEATURE_POINTS
  inpaint_images: int | None = None
  num_code_samples: int = 1000
  classifier_epochs: int = 10
  # Where the digits classifier is kept and shared between runs; "" (not given):
  # features.default_cache_dir() ($AGE_TF_CACHE_DIR or ~/.cache/age_tf).
  classifier_cache: str = ""
  # Shared with training (age_tf.config's flags):
  feature_model: str | None = None
  inception_weights: str | None = None
  mask_sampler: str | None = None
  mask_max_size: int | None = None
  mask_fill: float | None = None
  data_dir: str | None = None
  bn_statistics: str | None = None
  bn_statistics_images: int | None = None
  bn_statistics_prior_fraction: float | None = None

  def count(self, name, spec):
    """A per-dataset count (num_fid_samples, svm_*): the given value or the dataset's default."""
    value = getattr(self, name)
    if value is None:
      value = DEFAULTS["digits" if spec.name == "digits" else "other"][name]
    if value <= 0:
      raise UserError(f"--{name}={value} must be positive.")
    return value

  def check(self, spec):
    """Refuses bad counts before any work (the per-dataset defaults resolve first)."""
    for name in ("num_fid_samples", "svm_per_class", "svm_validation", "svm_grid_size"):
      self.count(name, spec)
    for name in ("eval_batch_size", "svm_repeats", "svm_hidden_layers", "num_code_samples",
                 "classifier_epochs", "kid_block_size", "inpaint_images"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise UserError(f"--{name}={value} must be positive.")
    if self.svm_features not in svm.FEATURE_POINTS:
      raise UserError(f"--svm_features={self.svm_features}: use one of "
                      f"{', '.join(svm.FEATURE_POINTS)}.")
    if self.kid_block_size == 1:
      raise UserError("--kid_block_size=1 leaves no pairs within a block; use 2 or more.")

  def statistics_settings(self, config):
    """The served BatchNorm statistics' inference_statistics.Settings: the run's, overridden."""
    return inference_statistics.settings_of(
        config, mode=self.bn_statistics, images=self.bn_statistics_images,
        prior_fraction=self.bn_statistics_prior_fraction)


_DEFAULT = EvalSettings()
# The flags shared with training that evaluate reads (key flags: listed by --help).
SHARED_FLAGS = ("model_dir", "data_dir", "feature_model", "inception_weights", "mask_sampler",
                "mask_max_size", "mask_fill", "bn_statistics", "bn_statistics_images",
                "bn_statistics_prior_fraction")
# Of those, the ones given only when on the command line (their flag defaults, if any, are
# training's); the others are not given when empty.
_GIVEN_WHEN_PRESENT = ("mask_sampler", "mask_max_size", "mask_fill", "bn_statistics",
                       "bn_statistics_images", "bn_statistics_prior_fraction")


def settings_from_flags(flag_values):
  """The EvalSettings of a parsed command line (the only reader of evaluate's flags)."""
  def given(name):
    flag = flag_values[name]
    return flag.value if flag.present else None
  own = {f.name: flag_values[f.name].value for f in dataclasses.fields(EvalSettings)
         if f.name not in SHARED_FLAGS and f.name != "metrics"}
  shared = {name: given(name) for name in _GIVEN_WHEN_PRESENT}
  shared.update({name: flag_values[name].value or None
                 for name in ("feature_model", "inception_weights", "data_dir")})
  metrics = given("metrics")
  return EvalSettings(metrics=tuple(metrics) if metrics is not None else None, **own,
                      **shared)


# ---------------------------------------------------------------- the model


def _checkpoint_path(model_dir, settings):
  value = settings.checkpoint
  if not value:
    return None
  path = (os.path.join(checkpointing.checkpoint_dir(model_dir), f"ckpt-{value}")
          if value.isdigit() else value)
  if not tf.io.gfile.exists(path + ".index"):
    state = tf.train.get_checkpoint_state(checkpointing.checkpoint_dir(model_dir))
    have = [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []
    raise UserError(f"--checkpoint={value}: no checkpoint at {path}; this run has "
                    f"{', '.join(have) or 'none'} (pass a step N or a path).")
  return path


def _load(model_dir, settings):
  """(config, model, step or None, checkpoint path or None)."""
  if settings.untrained:
    if settings.checkpoint:
      raise UserError("--untrained evaluates the initial weights; drop --checkpoint (or "
                      "--untrained).")
    config = checkpointing.saved_config(model_dir)
    if config is None:
      raise UserError(f"--model_dir={model_dir} has no {checkpointing.FLAGS_FILE}; train a run "
                      "there first (its flags define the untrained model).")
    keras.utils.set_random_seed(config.seed)
    return config, METHODS[config.method].create(config), None, None
  path = _checkpoint_path(model_dir, settings)
  config, model, step = checkpointing.load_model(model_dir, path)
  return config, model, step, path or checkpointing.latest_checkpoint(model_dir)


def _feature_model(config, spec, eval_root, settings):
  """(feature model, its description) from --feature_model, or the cached digits classifier."""
  name = settings.feature_model
  info = {}
  if not name:
    if spec.name != "digits":
      raise UserError(f"The metrics {', '.join(FEATURE_METRICS)} need a feature model for "
                      f"{spec.name}: pass --feature_model=DIR (a classifier trained with "
                      f"`python -m age_tf.classifier --dataset={spec.name} --model_dir=DIR`) or "
                      "--feature_model=inception with --inception_weights=FILE; or choose "
                      "--metrics=svm.")
    cache_dir = settings.classifier_cache or features.default_cache_dir()
    train = dict(epochs=settings.classifier_epochs, data_dir=config.data_dir or None,
                 download=config.download, **CLASSIFIER_SETTINGS)
    try:
      name, trained_now = features.cached_classifier(spec, cache_dir, **train)
    except OSError as e:  # a read-only home, a full disk: this run's own copy
      name = os.path.join(eval_root, CLASSIFIER_DIR)
      logging.warning("Cannot keep the digits classifier in %s (%s); using %s instead. Set "
                      "--classifier_cache (or $AGE_TF_CACHE_DIR) to a writable directory to "
                      "share it between runs.", cache_dir, e.strerror or e, name)
      trained_now = not features.classifier_complete(name)
      if trained_now:
        features.train_classifier(spec, name, verbose=0, **train)
    with tf.io.gfile.GFile(os.path.join(name, features.CLASSIFIER_INFO)) as f:
      trained = json.load(f)
    info = {"cached": True, "trained_now": trained_now,
            "test_accuracy": trained.get("test_accuracy"), "epochs": trained.get("epochs")}
  elif name != features.INCEPTION:
    info_path = os.path.join(name, features.CLASSIFIER_INFO)
    if tf.io.gfile.isdir(name) and tf.io.gfile.exists(info_path):
      with tf.io.gfile.GFile(info_path) as f:
        info = {"test_accuracy": json.load(f).get("test_accuracy")}
  # Runs whose method reads a feature model may name their own inception weights.
  weights = settings.inception_weights or getattr(config, "inception_weights", None) or None
  model = features.load_feature_model(name, config.image_size, config.channels,
                                      inception_weights=weights)
  return model, dict(info, name=name, dim=features.feature_dim(model))


def _mask_settings(config, settings, trained_on_masks):
  """--mask_* when given, else the run's own (a run trained on masked encoder inputs),
  else uniform rectangles up to full size.

  A central box without --mask_max_size is half the image's side.
  """
  def pick(name, default):
    given = getattr(settings, name)
    if given is not None:
      return given
    own = getattr(config, name, None) if trained_on_masks else None
    return own if own is not None else default
  sampler = pick("mask_sampler", DEFAULT_MASK_SAMPLER)
  max_size = pick("mask_max_size",
                  config.image_size // 2 if sampler == "central" else config.image_size)
  fill = pick("mask_fill", DEFAULT_MASK_FILL)
  if not 0 < max_size <= config.image_size:
    raise UserError(f"--mask_max_size={max_size} must be in 1..{config.image_size} (the image "
                    "size).")
  return dict(sampler=sampler, max_size=int(max_size), fill=float(fill))


@dataclasses.dataclass(frozen=True)
class Statistics:
  """The served BatchNorm statistics: settings, calibration inputs, description, and the
  checkpoint's moving averages (a snapshot; the model serves `settings`' by now)."""
  settings: inference_statistics.Settings
  calibration: object
  info: dict
  moving: list


def _served_statistics(model, config, spec, settings):
  """The model as it serves (the run's --bn_statistics, or this command's), and its Statistics."""
  moving = inference_statistics.snapshot(model)
  bn_settings = settings.statistics_settings(config)
  calibration = inference_statistics.calibration_for(config, bn_settings, spec)
  served, info = inference_statistics.prepare(model, config, bn_settings,
                                              calibration=calibration)
  return served, Statistics(bn_settings, calibration, info, moving)


def _arrays(ds):
  """(uint8 images, int64 labels) numpy arrays of a labelled dataset."""
  images, labels = [], []
  for x, y in ds:
    images.append(data.to_uint8(x).numpy())
    labels.append(y.numpy())
  return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------- metrics


@dataclasses.dataclass(frozen=True)
class EvalData:
  """What every metric unit reads: the model as it serves, the run and the evaluation's data."""
  model: object  # as it serves (inference_statistics.Served, or the model for "moving")
  config: object  # the run's config (--data_dir applied)
  spec: object  # its data.DatasetSpec
  test_images: np.ndarray  # the test split, float in [-1, 1]
  feature_model: object  # None when no requested unit needs one
  statistics: Statistics
  masks: dict  # inpainting's sampler, max_size and fill
  names: tuple  # the requested --metrics names


@dataclasses.dataclass(frozen=True)
class Result:
  """What a metric unit reports."""
  metrics: dict  # entries of metrics.json's "metrics" (also TensorBoard scalars)
  settings: dict  # metrics.json's "settings"[unit name]: what it computed on how much
  sections: dict = dataclasses.field(default_factory=dict)  # further top-level entries


class Metric:
  """One evaluation unit: computes the --metrics names it `provides` (see METRICS).

  `name` keys its entries of metrics.json's "settings" and "seconds";
  `needs_features` asks evaluate for the feature model (EvalData.feature_model).
  """
  name = None
  provides = ()
  needs_features = False

  def __call__(self, run, settings):
    """Returns a Result for EvalData `run` under EvalSettings `settings`."""
    raise NotImplementedError


class Reconstruction(Metric):
  """Reconstruction errors with the served statistics, the moving averages and batch statistics."""
  name = "recon"
  provides = ("recon",)
  needs_features = True

  def __call__(self, run, settings):
    model, config, test, statistics = run.model, run.config, run.test_images, run.statistics
    batch = settings.eval_batch_size
    errors = reconstruction.reconstruction_errors(model, test, run.feature_model, batch)
    m = {}
    m["recon/pixel_mse"], m["recon/pixel_mse_std"] = errors["pixel_mse"]
    m["recon/feature_mse"], m["recon/feature_mse_std"] = errors["feature_mse"]
    with inference_statistics.preserved(model):
      inference_statistics.assign(model, statistics.moving)
      m["recon/pixel_mse_moving"] = reconstruction.pixel_mse(
          inference_statistics.unwrap(model), test, batch)[0]
    # Training mode normalises each batch by its own statistics: batches of the run's size,
    # of test images in a seeded random order (as training's batches are; the split's order
    # may be a folder's, images of one kind together).
    shuffled = test[np.random.default_rng(settings.eval_seed).permutation(len(test))]
    m["recon/pixel_mse_batch_stats"] = reconstruction.pixel_mse(
        model, shuffled, config.batch_size, training=True)[0]
    m["recon/mean_image_pixel_mse"] = float(np.mean(np.square((test - test.mean(0)) / 2.0)))
    if not settings.untrained:
      keras.utils.set_random_seed(config.seed)
      untrained, _ = inference_statistics.prepare(
          METHODS[config.method].create(config), config, statistics.settings,
          calibration=statistics.calibration)
      m["recon/untrained_pixel_mse"] = reconstruction.pixel_mse(untrained, test, batch)[0]
    return Result(m, {
        "split": "test", "images": errors["count"], "batch_size": batch,
        "std": "over batches", "bn_statistics": statistics.info,
        "pixel_mse": "inference mode, the served BatchNorm statistics (--bn_statistics)",
        "pixel_mse_moving": "inference mode, training's BatchNorm moving averages",
        "pixel_mse_batch_stats": f"training mode: each batch of {config.batch_size} (the "
                                 "run's --batch_size, test images in a seeded random order) "
                                 "normalised by its own statistics",
        "mean_image_pixel_mse": "every image predicted by the mean test image"})


class ClassifierDistances(Metric):
  """FID and KID between generated samples and real training images, in feature space.

  One unit for both: they share the activations; each is reported when requested.
  """
  name = "fid_kid"
  provides = ("fid", "kid")
  needs_features = True

  def __call__(self, run, settings):
    spec, config, batch = run.spec, run.config, settings.eval_batch_size
    count = settings.count("num_fid_samples", spec)
    real_count = min(count, spec.num_train)
    real = data.source(spec, "train", config.data_dir or None, config.download).take(real_count)
    real = real.batch(batch).map(lambda b: data.to_float(b["image"]))
    real_act = classifier_distances.activations(run.feature_model, real, batch)
    fake_act = classifier_distances.sample_activations(run.model, run.feature_model, count,
                                                       settings.eval_seed, batch)
    block = settings.kid_block_size or classifier_distances.default_block_size(
        max(len(real_act), len(fake_act)))
    result = classifier_distances.fid_and_kid(real_act, fake_act, block)
    m = {}
    if "fid" in run.names:
      m["fid"] = result["fid"]
    if "kid" in run.names:
      m["kid"], m["kid_std"] = result["kid"], result["kid_std"]
    return Result(m, {
        "real": int(len(real_act)), "real_split": "train (first images)",
        "generated": int(len(fake_act)), "kid_max_block_size": int(block),
        "kid_blocks": result["kid_blocks"], "covariance": "unbiased (n - 1), as TF-GAN",
        "kid_std": "standard error over blocks, as TF-GAN"})


def _svm_hidden_layers(model, settings):
  """The encoder layers --svm_hidden_layers names; refuses a count the encoder lacks."""
  try:
    return svm.hidden_layers(model.encoder, settings.svm_hidden_layers)
  except ValueError as e:
    raise UserError(f"--svm_hidden_layers={settings.svm_hidden_layers}: {e} Use a smaller "
                    "value.") from e


class LinearSVM(Metric):
  """The papers' linear SVM on encoder features: test error over fresh labelled sets."""
  name = "svm"
  provides = ("svm",)

  def __call__(self, run, settings):
    config, spec = run.config, run.spec
    per_class = settings.count("svm_per_class", spec)
    validation = settings.count("svm_validation", spec)
    grid = settings.count("svm_grid_size", spec)
    # The protocol's pool and validation come from the train split only (SVHN: not extra).
    train_spec = data.get_spec(config.dataset, config.image_size, config.channels, "train")
    kwargs = dict(data_dir=config.data_dir or None, download=config.download)
    train_x, train_y = _arrays(data.labelled_dataset(train_spec, "train", 1000, **kwargs))
    test_x, test_y = _arrays(data.labelled_dataset(train_spec, "test", 1000, **kwargs))
    if validation >= len(train_y):
      raise UserError(f"--svm_validation={validation} leaves no pool of the {len(train_y)} "
                      "training images; use a smaller value.")
    hidden = _svm_hidden_layers(run.model, settings)
    featurize_images = svm.encoder_features(run.model, settings.svm_hidden_layers,
                                            settings.svm_features,
                                            batch_size=settings.eval_batch_size)
    try:
      result = svm.linear_svm_error(
          train_x[:-validation], train_y[:-validation], train_x[-validation:],
          train_y[-validation:], test_x, test_y, per_class=per_class,
          repeats=settings.svm_repeats, c_values=svm.c_grid(grid), seed=settings.eval_seed,
          featurize=lambda x: featurize_images(data.to_float(x)), batch_size=1000)
    except ValueError as e:
      raise UserError(f"SVM protocol: {e} (--svm_per_class, --svm_validation)") from e
    described = {k: result[k] for k in (
        "per_class", "labelled", "repeats", "pool", "validation", "test", "grid",
        "feature_dim", "fits", "unconverged_fits")}
    point = "their inputs" if settings.svm_features == "pre_activations" else "their outputs"
    described["features"] = (f"encoder's last {len(hidden)} hidden layers ("
                             + ", ".join(l.name for l in hidden) + f"; {point}) + code mean")
    return Result({"svm/error": result["error"], "svm/error_std": result["error_std"]},
                  described,
                  {"svm": {"errors": result["errors"], "c": result["c"],
                           "validation_error": result["validation_error"]}})


class Inpainting(Metric):
  """Errors of the masked regions restored by the model, on masked test images."""
  name = "inpaint"
  provides = ("inpaint",)
  needs_features = True

  def __call__(self, run, settings):
    masks = run.masks
    count = settings.inpaint_images or len(run.test_images)
    result = inpainting.inpainting_errors(
        run.model, run.test_images[:count], sampler=masks["sampler"],
        max_size=masks["max_size"], fill=masks["fill"], seed=settings.eval_seed,
        feature_model=run.feature_model, batch_size=settings.eval_batch_size)
    m = {}
    m["inpaint/pixel_mse"], m["inpaint/pixel_mse_std"] = result["pixel_mse"]
    m["inpaint/feature_mse"], m["inpaint/feature_mse_std"] = result["feature_mse"]
    return Result(m, dict(masks, images=result["count"], split="test",
                          masked_fraction=result["masked_fraction"], std="over batches"))


_RECON, _FID_KID = Reconstruction(), ClassifierDistances()
_SVM, _INPAINT = LinearSVM(), Inpainting()
# The --metrics names and the unit computing each (fid and kid share one).
METRICS = {"recon": _RECON, "fid": _FID_KID, "kid": _FID_KID, "svm": _SVM, "inpaint": _INPAINT}
# The order the units run in.
UNITS = (_RECON, _FID_KID, _INPAINT, _SVM)
FEATURE_METRICS = tuple(name for name, unit in METRICS.items() if unit.needs_features)


def _requested_metrics(settings, spec):
  given = settings.metrics is not None
  metrics = settings.metrics if given else tuple(METRICS)
  names = [m.strip() for m in metrics if m.strip()]
  unknown = [m for m in names if m not in METRICS]
  if unknown or not names:
    raise UserError(f"--metrics={','.join(metrics)}: unknown metric(s) "
                    f"{', '.join(unknown) or '(none given)'}; valid: {', '.join(METRICS)}.")
  if "svm" in names and not _labelled(spec):
    if given:
      raise UserError(f"--metrics=svm needs class labels and {spec.name} has none; drop svm "
                      "from --metrics.")
    names.remove("svm")
  return list(dict.fromkeys(names))


def _labelled(spec):
  try:
    data.num_classes(spec)
    return True
  except UserError:
    return False


def _code_statistics(model, test_images, settings, report):
  """Per-dimension mean and variance of e(g(z)) and e(x) (the paper's: near 0 and 1/M)."""
  rng = tf.random.Generator.from_seed(settings.eval_seed + 1)
  z = inputs.prior_codes(rng, model, settings.num_code_samples)
  fake = inputs.map_batches(
      tf.function(lambda x: model.encode(model.generate(x, training=False), training=False)),
      z, settings.eval_batch_size)
  real = inputs.map_batches(tf.function(lambda x: model.encode(x, training=False)),
                            test_images, settings.eval_batch_size)
  target = 1.0 / model.latent_dim if model.prior == "sphere" else 1.0
  stats = {"target_mean": 0.0, "target_var": target, "samples": int(len(fake)),
           "real_images": int(len(real))}
  for which, codes in (("fake", fake), ("real", real)):
    stats[f"{which}_mean"] = codes.mean(0).tolist()
    stats[f"{which}_var"] = codes.var(0).tolist()
    report["metrics"][f"codes/{which}_mean"] = float(codes.mean(0).mean())
    report["metrics"][f"codes/{which}_var"] = float(codes.var(0).mean())
  report["codes"] = stats
  return stats


# ---------------------------------------------------------------- figures


def _figures(model, test_images, masks, stats, out_dir, seed):
  """Draws every figure; returns {name: uint8 image}."""
  count = len(test_images)
  # 32 reconstruction pairs, 8 interpolations, 16 restorations (fewer for a tiny test split).
  pairs = max(1, min(8, count // 2))
  columns = min(figures.COLUMNS, count)
  restore = tf.constant(test_images[:min(16, count) // columns * columns])
  rng = tf.random.Generator.from_seed(seed + 2)
  mask = inpainting.masks_for(rng, int(restore.shape[0]), int(restore.shape[1]),
                              masks["max_size"], masks["sampler"])
  title = (f"e(g(z)) of {stats['samples']} samples, M = {model.latent_dim} "
           f"(targets 0 and {'1/M' if model.prior == 'sphere' else '1'})")
  drawn = {
      "samples": figures.samples(model, 64, seed),
      "reconstructions": figures.reconstructions(model, tf.constant(test_images[:32])),
      "interpolations": figures.interpolations(
          model, tf.constant(test_images[:pairs]),
          tf.constant(test_images[pairs:2 * pairs] if count > 1 else test_images[:1])),
      "restorations": figures.restorations(model, restore, mask, masks["fill"], columns),
      "codes": figures.code_statistics_plot(stats["fake_mean"], stats["fake_var"],
                                            stats["target_var"], title),
  }
  for name, image in drawn.items():
    images_lib.write_png(os.path.join(out_dir, f"{name}.png"), np.asarray(image))
  return drawn


def _summaries(eval_root, step, report, drawn):
  writer = tf.summary.create_file_writer(eval_root)
  with writer.as_default(step=step):
    for key, value in report["metrics"].items():
      if value is not None and np.isfinite(value):
        tf.summary.scalar(f"eval/{key}", value)
    for name, image in drawn.items():
      tf.summary.image(f"eval/{name}", np.asarray(image)[None])
  writer.flush()
  writer.close()


# ---------------------------------------------------------------- evaluate


def _keep_earlier_metrics(report, path):
  """Keeps in `report` what an earlier metrics.json at `path` computed and this one did not.

  Only when that report served the same model: the same checkpoint (by
  name: a copied run keeps its results) and the same BatchNorm statistics.
  So `--metrics=inpaint` after a full evaluation adds inpainting and loses
  nothing; the units kept are listed under "kept_from_earlier".
  """
  if not os.path.exists(path):
    return
  try:
    with open(path) as f:
      earlier = json.load(f)
  except (OSError, ValueError):
    return  # unreadable: this evaluation replaces it

  def served(r):
    name = os.path.basename(r.get("checkpoint") or "")
    statistics = {k: v for k, v in (r.get("bn_statistics") or {}).items() if k != "seconds"}
    return name, r.get("untrained"), statistics
  if served(earlier) != served(report):
    return
  kept = sorted(set(earlier.get("settings", {})) - set(report["settings"]))
  if not kept:
    return
  for name in kept:
    report["settings"][name] = earlier["settings"][name]
  for key, value in earlier.get("metrics", {}).items():
    report["metrics"].setdefault(key, value)
  for key, value in earlier.items():  # sections such as "svm" and "feature_model"
    report.setdefault(key, value)
  report["kept_from_earlier"] = kept


def evaluate(model_dir, settings=None):
  """Evaluates the run in model_dir under EvalSettings (default: evaluate's flag defaults).

  Returns (the report, its directory); writes the report as metrics.json
  there with the figures, and TensorBoard summaries under MODEL_DIR/eval.
  """
  settings = settings or EvalSettings()
  began = time.perf_counter()
  if settings.metrics is not None:  # unknown names are refused before any work
    unknown = [m for m in settings.metrics if m.strip() not in METRICS]
    if unknown:
      raise UserError(f"--metrics={','.join(settings.metrics)}: unknown metric(s) "
                      f"{', '.join(unknown)}; valid: {', '.join(METRICS)}.")
  config, model, step, path = _load(model_dir, settings)
  if settings.data_dir:
    config = dataclasses.replace(config, data_dir=settings.data_dir)
  spec = config_lib.dataset_spec(config)
  names = _requested_metrics(settings, spec)
  settings.check(spec)
  masks = _mask_settings(config, settings, model.masks_encoder_inputs)
  if "svm" in names:
    _svm_hidden_layers(model, settings)  # before any work
  t = time.perf_counter()
  model, statistics = _served_statistics(model, config, spec, settings)
  report_statistics = dict(statistics.info, seconds=time.perf_counter() - t)
  eval_root = os.path.join(model_dir, EVAL_DIR)
  out_dir = os.path.join(eval_root, "untrained" if settings.untrained else str(step))
  report = {"model_dir": model_dir, "method": config.method, "dataset": config.dataset,
            "step": step or 0, "checkpoint": path, "untrained": settings.untrained,
            "metrics_computed": names, "metrics": {}, "settings": {}, "seconds": {},
            "bn_statistics": report_statistics}
  logging.info("Evaluating %s on %s (%s): %s.", config.method, spec.name,
               "untrained" if settings.untrained else f"step {step}", ", ".join(names))

  test = data.test_dataset(spec, settings.eval_batch_size, config.data_dir or None,
                           config.download)
  batches = [x.numpy() for x, _ in test]
  if not batches:
    raise UserError(f"Dataset {spec.name} has no test images to evaluate on.")
  test_images = np.concatenate(batches)
  units = [unit for unit in UNITS if any(n in names for n in unit.provides)]
  feature_model = None
  if any(unit.needs_features for unit in units):
    t = time.perf_counter()
    feature_model, report["feature_model"] = _feature_model(config, spec, eval_root, settings)
    report["seconds"]["feature_model"] = time.perf_counter() - t

  run = EvalData(model=model, config=config, spec=spec, test_images=test_images,
                 feature_model=feature_model, statistics=statistics, masks=masks,
                 names=tuple(names))
  for unit in units:
    t = time.perf_counter()
    result = unit(run, settings)
    report["metrics"].update(result.metrics)
    report["settings"][unit.name] = result.settings
    report.update(result.sections)
    report["seconds"][unit.name] = time.perf_counter() - t
    logging.info("%s done in %.1f s.", unit.name, report["seconds"][unit.name])
  t = time.perf_counter()
  stats = _code_statistics(model, test_images, settings, report)
  tf.io.gfile.makedirs(out_dir)
  drawn = _figures(model, test_images, masks, stats, out_dir, settings.eval_seed)
  report["figures"] = {name: f"{name}.png" for name in drawn}
  report["seconds"]["figures"] = time.perf_counter() - t
  report["seconds"]["total"] = time.perf_counter() - began
  _summaries(eval_root, step or 0, report, drawn)
  _keep_earlier_metrics(report, os.path.join(out_dir, METRICS_FILE))
  files.atomic_write(os.path.join(out_dir, METRICS_FILE),
                     json.dumps(report, indent=2, sort_keys=True, default=_json) + "\n")
  return report, out_dir


# ---------------------------------------------------------------- flags and main


flags.DEFINE_list("metrics", ",".join(METRICS), "Metrics to compute, any of "
                  f"{', '.join(METRICS)} (default: all; svm is skipped for datasets "
                  "without class labels unless named).")
flags.DEFINE_string("checkpoint", _DEFAULT.checkpoint, "Checkpoint to evaluate: a step N "
                    "(MODEL_DIR/checkpoints/ckpt-N) or a checkpoint path (default: the latest).")
flags.DEFINE_bool("untrained", _DEFAULT.untrained, "Evaluate the untrained model (initial "
                  "weights, Keras seeded with the run's --seed) instead of a checkpoint; writes "
                  "eval/untrained.")
flags.DEFINE_integer("eval_batch_size", _DEFAULT.eval_batch_size, "Images per forward pass.")
flags.DEFINE_integer("eval_seed", _DEFAULT.eval_seed, "Seed of the evaluation's own draws: "
                     "sample codes, masks, SVM labelled sets.")
flags.DEFINE_integer("num_fid_samples", _DEFAULT.num_fid_samples, "FID/KID: generated samples, "
                     "and real training images (capped at the train split) (default 10000; "
                     "digits 1000).")
flags.DEFINE_integer("kid_block_size", _DEFAULT.kid_block_size, "KID: TF-GAN's max_block_size "
                     "(default 1024, but at most a tenth of the samples, so the std has 10 "
                     "blocks or more).")
flags.DEFINE_integer("svm_repeats", _DEFAULT.svm_repeats, "SVM: fresh labelled sets (the "
                     "papers' 100).")
flags.DEFINE_integer("svm_per_class", _DEFAULT.svm_per_class, "SVM: labelled examples per "
                     "class (default: the papers' 100; digits 10).")
flags.DEFINE_integer("svm_validation", _DEFAULT.svm_validation, "SVM: the last this many "
                     "training examples are the validation split that picks C, the rest the "
                     "pool (default: the papers' 10000; digits 300).")
flags.DEFINE_integer("svm_grid_size", _DEFAULT.svm_grid_size, "SVM: number of C values in "
                     "exp(linspace(-20, 20, N)) (default: the papers' 50).")
flags.DEFINE_integer("svm_hidden_layers", _DEFAULT.svm_hidden_layers, "SVM: the encoder's "
                     "last N hidden layers in the features, beside the code mean (the papers' "
                     "3; the ALI authors' feature script reads 5).")
flags.DEFINE_enum("svm_features", _DEFAULT.svm_features, svm.FEATURE_POINTS, "SVM: read each "
                  "hidden layer after its nonlinearity (activations: the papers' text) or "
                  "before it (pre_activations: the BatchNorm outputs the GALI authors' "
                  "encoders return).")
flags.DEFINE_integer("inpaint_images", _DEFAULT.inpaint_images, "Inpainting: test images to "
                     "mask (default: all).")
flags.DEFINE_integer("num_code_samples", _DEFAULT.num_code_samples, "Codes e(g(z)) for the "
                     "code statistics.")
flags.DEFINE_integer("classifier_epochs", _DEFAULT.classifier_epochs, "digits without "
                     "--feature_model: epochs of the digits classifier, trained once into "
                     "--classifier_cache and shared by every run evaluated with it.")
flags.DEFINE_string("classifier_cache", _DEFAULT.classifier_cache, "Directory of the shared "
                    "digits classifier (default: $AGE_TF_CACHE_DIR, else "
                    "$XDG_CACHE_HOME/age_tf, else ~/.cache/age_tf); unwritable: "
                    "MODEL_DIR/eval/classifier.")
for _name in SHARED_FLAGS:  # defined by age_tf.config; --help lists them with evaluate's own
  flags.declare_key_flag(_name)
del _name

FLAGS = flags.FLAGS


def _json(value):
  if isinstance(value, (np.floating, np.integer)):
    return value.item()
  raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _summary_lines(report):
  m = report["metrics"]
  order = ["recon/pixel_mse", "recon/pixel_mse_moving", "recon/pixel_mse_batch_stats",
           "recon/mean_image_pixel_mse", "recon/feature_mse", "recon/untrained_pixel_mse",
           "fid", "kid", "kid_std", "svm/error", "svm/error_std", "inpaint/pixel_mse",
           "inpaint/feature_mse", "codes/fake_mean", "codes/fake_var"]
  return [f"  {k:28s} {m[k]:.6g}" for k in order if k in m]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  try:
    if not FLAGS.model_dir:
      raise UserError("--model_dir is required: the directory of a run trained with "
                      "python -m age_tf.train.")
    report, out_dir = evaluate(FLAGS.model_dir, settings_from_flags(FLAGS))
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  print(f"{report['method']} on {report['dataset']}, "
        f"{'untrained' if report['untrained'] else 'step ' + str(report['step'])}:")
  print("\n".join(_summary_lines(report)))
  print(f"wrote {os.path.join(out_dir, METRICS_FILE)} and "
        f"{', '.join(report['figures'].values())}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
