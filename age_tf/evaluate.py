"""Entry point: python -m age_tf.evaluate --model_dir=DIR runs the papers' evaluation protocols and draws the figures.

Writes MODEL_DIR/eval/STEP/metrics.json and PNG figures beside it (STEP is
the checkpoint's step; `untrained` with --untrained), and TensorBoard
summaries under MODEL_DIR/eval. See the README's "Evaluation" section.
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

METRICS = ("recon", "fid", "kid", "svm", "inpaint")
FEATURE_METRICS = ("recon", "fid", "kid", "inpaint")
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

flags.DEFINE_list("metrics", ",".join(METRICS), "Metrics to compute, any of "
                  f"{', '.join(METRICS)} (default: all; svm is skipped for datasets "
                  "without class labels unless named).")
flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate: a step N (MODEL_DIR/"
                    "checkpoints/ckpt-N) or a checkpoint path (default: the latest).")
flags.DEFINE_bool("untrained", False, "Evaluate the untrained model (initial weights, Keras "
                  "seeded with the run's --seed) instead of a checkpoint; writes eval/untrained.")
flags.DEFINE_integer("eval_batch_size", 100, "Images per forward pass.")
flags.DEFINE_integer("eval_seed", 0, "Seed of the evaluation's own draws: sample codes, "
                     "masks, SVM labelled sets.")
flags.DEFINE_integer("num_fid_samples", None, "FID/KID: generated samples, and real training "
                     "images (capped at the train split) (default 10000; digits 1000).")
flags.DEFINE_integer("kid_block_size", None, "KID: TF-GAN's max_block_size (default 1024, "
                     "but at most a tenth of the samples, so the std has 10 blocks or more).")
flags.DEFINE_integer("svm_repeats", svm.PAPER_REPEATS, "SVM: fresh labelled sets (the "
                     "papers' 100).")
flags.DEFINE_integer("svm_per_class", None, "SVM: labelled examples per class (default: the "
                     "papers' 100; digits 10).")
flags.DEFINE_integer("svm_validation", None, "SVM: the last this many training examples are "
                     "the validation split that picks C, the rest the pool (default: the "
                     "papers' 10000; digits 300).")
flags.DEFINE_integer("svm_grid_size", None, "SVM: number of C values in exp(linspace(-20, 20, "
                     "N)) (default: the papers' 50).")
flags.DEFINE_integer("inpaint_images", None, "Inpainting: test images to mask (default: all).")
flags.DEFINE_integer("num_code_samples", 1000, "Codes e(g(z)) for the code statistics.")
flags.DEFINE_integer("classifier_epochs", 10, "digits without --feature_model: epochs of the "
                     "digits classifier trained once into MODEL_DIR/eval/classifier.")

FLAGS = flags.FLAGS


# ---------------------------------------------------------------- settings


def _setting(name, spec):
  value = FLAGS[name].value
  if value is None:
    value = DEFAULTS["digits" if spec.name == "digits" else "other"][name]
  if value <= 0:
    raise UserError(f"--{name}={value} must be positive.")
  return value


def _check_flags(spec):
  """Refuses bad counts before any work (the per-dataset defaults resolve first)."""
  for name in ("num_fid_samples", "svm_per_class", "svm_validation", "svm_grid_size"):
    _setting(name, spec)
  for name in ("eval_batch_size", "svm_repeats", "num_code_samples", "classifier_epochs",
               "kid_block_size", "inpaint_images"):
    value = FLAGS[name].value
    if value is not None and value <= 0:
      raise UserError(f"--{name}={value} must be positive.")
  if FLAGS.kid_block_size == 1:
    raise UserError("--kid_block_size=1 leaves no pairs within a block; use 2 or more.")


def _requested_metrics(spec):
  names = [m.strip() for m in FLAGS.metrics if m.strip()]
  unknown = [m for m in names if m not in METRICS]
  if unknown or not names:
    raise UserError(f"--metrics={','.join(FLAGS.metrics)}: unknown metric(s) "
                    f"{', '.join(unknown) or '(none given)'}; valid: {', '.join(METRICS)}.")
  if "svm" in names and not _labelled(spec):
    if FLAGS["metrics"].present:
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


def _mask_settings(config):
  """--mask_* when given, else the run's own (GALI-mix), else uniform rectangles up to full size.

  A central box without --mask_max_size is half the image's side.
  """
  def pick(name, default):
    if FLAGS[name].present:
      return FLAGS[name].value
    own = getattr(config, name, None)
    return own if own is not None else default
  sampler = pick("mask_sampler", "uniform")
  max_size = pick("mask_max_size",
                  config.image_size // 2 if sampler == "central" else config.image_size)
  fill = pick("mask_fill", -1.0)
  if not 0 < max_size <= config.image_size:
    raise UserError(f"--mask_max_size={max_size} must be in 1..{config.image_size} (the image "
                    "size).")
  return dict(sampler=sampler, max_size=int(max_size), fill=float(fill))


def _checkpoint_path(model_dir):
  value = FLAGS.checkpoint
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


# ---------------------------------------------------------------- the model


def _load(model_dir):
  """(config, model, step or None, checkpoint path or None)."""
  if FLAGS.untrained:
    if FLAGS.checkpoint:
      raise UserError("--untrained evaluates the initial weights; drop --checkpoint (or "
                      "--untrained).")
    config = checkpointing.saved_config(model_dir)
    if config is None:
      raise UserError(f"--model_dir={model_dir} has no {checkpointing.FLAGS_FILE}; train a run "
                      "there first (its flags define the untrained model).")
    keras.utils.set_random_seed(config.seed)
    return config, METHODS[config.method].from_config(config), None, None
  path = _checkpoint_path(model_dir)
  config, model, step = checkpointing.load_model(model_dir, path)
  return config, model, step, path or checkpointing.latest_checkpoint(model_dir)


def _feature_model(config, spec, eval_root):
  """(feature model, its description) from --feature_model, or the cached digits classifier."""
  name = FLAGS.feature_model
  info = {}
  if not name:
    if spec.name != "digits":
      raise UserError(f"The metrics {', '.join(FEATURE_METRICS)} need a feature model for "
                      f"{spec.name}: pass --feature_model=DIR (a classifier trained with "
                      f"`python -m age_tf.classifier --dataset={spec.name} --model_dir=DIR`) or "
                      "--feature_model=inception with --inception_weights=FILE; or choose "
                      "--metrics=svm.")
    name = os.path.join(eval_root, CLASSIFIER_DIR)
    info_path = os.path.join(name, features.CLASSIFIER_INFO)
    if not tf.io.gfile.exists(os.path.join(name, features.CLASSIFIER_FILE)):
      logging.info("No --feature_model: training the digits classifier (%d epochs) into %s.",
                   FLAGS.classifier_epochs, name)
      features.train_classifier(spec, name, epochs=FLAGS.classifier_epochs,
                                data_dir=config.data_dir or None, download=config.download,
                                verbose=0, **CLASSIFIER_SETTINGS)
    with tf.io.gfile.GFile(info_path) as f:
      trained = json.load(f)
    info = {"trained_here": True, "test_accuracy": trained.get("test_accuracy"),
            "epochs": trained.get("epochs")}
  elif name != features.INCEPTION:
    info_path = os.path.join(name, features.CLASSIFIER_INFO)
    if tf.io.gfile.isdir(name) and tf.io.gfile.exists(info_path):
      with tf.io.gfile.GFile(info_path) as f:
        info = {"test_accuracy": json.load(f).get("test_accuracy")}
  weights = FLAGS.inception_weights or config.inception_weights or None
  model = features.load_feature_model(name, config.image_size, config.channels,
                                      inception_weights=weights)
  return model, dict(info, name=name, dim=features.feature_dim(model))


def _arrays(ds):
  """(uint8 images, int64 labels) numpy arrays of a labelled dataset."""
  images, labels = [], []
  for x, y in ds:
    images.append(data.to_uint8(x).numpy())
    labels.append(y.numpy())
  return np.concatenate(images), np.concatenate(labels)


# ---------------------------------------------------------------- metrics


def _recon(model, config, test, feature_model, moving, statistics, report):
  """Reconstruction errors with the served statistics, the moving averages and batch statistics.

  `moving` holds the checkpoint's moving averages (the model serves
  `statistics`' by now).
  """
  batch = FLAGS.eval_batch_size
  errors = reconstruction.reconstruction_errors(model, test, feature_model, batch)
  m = report["metrics"]
  m["recon/pixel_mse"], m["recon/pixel_mse_std"] = errors["pixel_mse"]
  m["recon/feature_mse"], m["recon/feature_mse_std"] = errors["feature_mse"]
  with inference_statistics.preserved(model):
    inference_statistics.assign(model, moving)
    m["recon/pixel_mse_moving"] = reconstruction.pixel_mse(
        inference_statistics.unwrap(model), test, batch)[0]
  # Training mode normalises each batch by its own statistics: batches of the run's size, of
  # test images in a seeded random order (as training's batches are; the split's order may
  # be a folder's, images of one kind together).
  shuffled = test[np.random.default_rng(FLAGS.eval_seed).permutation(len(test))]
  m["recon/pixel_mse_batch_stats"] = reconstruction.pixel_mse(
      model, shuffled, config.batch_size, training=True)[0]
  m["recon/mean_image_pixel_mse"] = float(np.mean(np.square((test - test.mean(0)) / 2.0)))
  if not FLAGS.untrained:
    keras.utils.set_random_seed(config.seed)
    untrained, _ = inference_statistics.prepare(
        METHODS[config.method].from_config(config), config, statistics.settings,
        calibration=statistics.calibration)
    m["recon/untrained_pixel_mse"] = reconstruction.pixel_mse(untrained, test, batch)[0]
  report["settings"]["recon"] = {
      "split": "test", "images": errors["count"], "batch_size": batch, "std": "over batches",
      "bn_statistics": statistics.info,
      "pixel_mse": "inference mode, the served BatchNorm statistics (--bn_statistics)",
      "pixel_mse_moving": "inference mode, training's BatchNorm moving averages",
      "pixel_mse_batch_stats": f"training mode: each batch of {config.batch_size} (the run's "
                               "--batch_size, test images in a seeded random order) "
                               "normalised by its own statistics",
      "mean_image_pixel_mse": "every image predicted by the mean test image"}


def _fid_kid(model, config, spec, feature_model, names, report):
  count = _setting("num_fid_samples", spec)
  real_count = min(count, spec.num_train)
  real = data.source(spec, "train", config.data_dir or None, config.download).take(real_count)
  real = real.batch(FLAGS.eval_batch_size).map(lambda b: data.to_float(b["image"]))
  real_act = classifier_distances.activations(feature_model, real, FLAGS.eval_batch_size)
  fake_act = classifier_distances.sample_activations(model, feature_model, count,
                                                     FLAGS.eval_seed, FLAGS.eval_batch_size)
  block = FLAGS.kid_block_size or classifier_distances.default_block_size(
      max(len(real_act), len(fake_act)))
  result = classifier_distances.fid_and_kid(real_act, fake_act, block)
  m = report["metrics"]
  if "fid" in names:
    m["fid"] = result["fid"]
  if "kid" in names:
    m["kid"], m["kid_std"] = result["kid"], result["kid_std"]
  report["settings"]["fid_kid"] = {
      "real": int(len(real_act)), "real_split": "train (first images)",
      "generated": int(len(fake_act)), "kid_max_block_size": int(block),
      "kid_blocks": result["kid_blocks"], "covariance": "unbiased (n - 1), as TF-GAN",
      "kid_std": "standard error over blocks, as TF-GAN"}


def _svm(model, config, spec, report):
  per_class = _setting("svm_per_class", spec)
  validation = _setting("svm_validation", spec)
  grid = _setting("svm_grid_size", spec)
  repeats = FLAGS.svm_repeats
  # The protocol's pool and validation come from the train split only (SVHN: not extra).
  train_spec = data.get_spec(config.dataset, config.image_size, config.channels, "train")
  kwargs = dict(data_dir=config.data_dir or None, download=config.download)
  train_x, train_y = _arrays(data.labelled_dataset(train_spec, "train", 1000, **kwargs))
  test_x, test_y = _arrays(data.labelled_dataset(train_spec, "test", 1000, **kwargs))
  if validation >= len(train_y):
    raise UserError(f"--svm_validation={validation} leaves no pool of the {len(train_y)} "
                    "training images; use a smaller value.")
  featurize_images = svm.encoder_features(model, batch_size=FLAGS.eval_batch_size)
  try:
    result = svm.linear_svm_error(
        train_x[:-validation], train_y[:-validation], train_x[-validation:],
        train_y[-validation:], test_x, test_y, per_class=per_class, repeats=repeats,
        c_values=svm.c_grid(grid), seed=FLAGS.eval_seed,
        featurize=lambda x: featurize_images(data.to_float(x)), batch_size=1000)
  except ValueError as e:
    raise UserError(f"SVM protocol: {e} (--svm_per_class, --svm_validation)") from e
  m = report["metrics"]
  m["svm/error"], m["svm/error_std"] = result["error"], result["error_std"]
  report["settings"]["svm"] = {k: result[k] for k in (
      "per_class", "labelled", "repeats", "pool", "validation", "test", "grid", "feature_dim",
      "fits", "unconverged_fits")}
  report["settings"]["svm"]["features"] = ("encoder's last 3 hidden layers ("
                                           + ", ".join(l.name for l in svm.hidden_layers(
                                               model.encoder)) + ") + code mean")
  report["svm"] = {"errors": result["errors"], "c": result["c"],
                   "validation_error": result["validation_error"]}


def _inpaint(model, spec, test_images, feature_model, masks, report):
  count = FLAGS.inpaint_images or len(test_images)
  result = inpainting.inpainting_errors(
      model, test_images[:count], sampler=masks["sampler"], max_size=masks["max_size"],
      fill=masks["fill"], seed=FLAGS.eval_seed, feature_model=feature_model,
      batch_size=FLAGS.eval_batch_size)
  m = report["metrics"]
  m["inpaint/pixel_mse"], m["inpaint/pixel_mse_std"] = result["pixel_mse"]
  m["inpaint/feature_mse"], m["inpaint/feature_mse_std"] = result["feature_mse"]
  report["settings"]["inpaint"] = dict(masks, images=result["count"], split="test",
                                       masked_fraction=result["masked_fraction"],
                                       std="over batches")


def _code_statistics(model, test_images, report):
  """Per-dimension mean and variance of e(g(z)) and e(x) (the paper's: near 0 and 1/M)."""
  rng = tf.random.Generator.from_seed(FLAGS.eval_seed + 1)
  z = inputs.prior_codes(rng, model, FLAGS.num_code_samples)
  fake = inputs.map_batches(
      tf.function(lambda x: model.encode(model.generate(x, training=False), training=False)),
      z, FLAGS.eval_batch_size)
  real = inputs.map_batches(tf.function(lambda x: model.encode(x, training=False)),
                            test_images, FLAGS.eval_batch_size)
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


def _figures(model, test_images, masks, stats, out_dir):
  """Draws every figure; returns {name: uint8 image}."""
  seed, count = FLAGS.eval_seed, len(test_images)
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


# ---------------------------------------------------------------- main


def evaluate(model_dir):
  """Evaluates the run in model_dir as the flags say; returns the report (also written)."""
  began = time.perf_counter()
  unknown = [m for m in FLAGS.metrics if m.strip() not in METRICS]
  if unknown:  # before any work
    raise UserError(f"--metrics={','.join(FLAGS.metrics)}: unknown metric(s) "
                    f"{', '.join(unknown)}; valid: {', '.join(METRICS)}.")
  config, model, step, path = _load(model_dir)
  if FLAGS.data_dir:
    config = dataclasses.replace(config, data_dir=FLAGS.data_dir)
  spec = config_lib.dataset_spec(config)
  names = _requested_metrics(spec)
  _check_flags(spec)
  masks = _mask_settings(config)
  t = time.perf_counter()
  moving = inference_statistics.snapshot(model)
  model, statistics = _served_statistics(model, config, spec)
  report_statistics = dict(statistics.info, seconds=time.perf_counter() - t)
  eval_root = os.path.join(model_dir, EVAL_DIR)
  out_dir = os.path.join(eval_root, "untrained" if FLAGS.untrained else str(step))
  report = {"model_dir": model_dir, "method": config.method, "dataset": config.dataset,
            "step": step or 0, "checkpoint": path, "untrained": FLAGS.untrained,
            "metrics_computed": names, "metrics": {}, "settings": {}, "seconds": {},
            "bn_statistics": report_statistics}
  logging.info("Evaluating %s on %s (%s): %s.", config.method, spec.name,
               "untrained" if FLAGS.untrained else f"step {step}", ", ".join(names))

  test = data.test_dataset(spec, FLAGS.eval_batch_size, config.data_dir or None,
                           config.download)
  batches = [x.numpy() for x, _ in test]
  if not batches:
    raise UserError(f"Dataset {spec.name} has no test images to evaluate on.")
  test_images = np.concatenate(batches)
  feature_model = None
  if any(n in FEATURE_METRICS for n in names):
    t = time.perf_counter()
    feature_model, report["feature_model"] = _feature_model(config, spec, eval_root)
    report["seconds"]["feature_model"] = time.perf_counter() - t

  def timed(key, fn, *args):
    t = time.perf_counter()
    fn(*args)
    report["seconds"][key] = time.perf_counter() - t
    logging.info("%s done in %.1f s.", key, report["seconds"][key])

  if "recon" in names:
    timed("recon", _recon, model, config, test_images, feature_model, moving, statistics,
          report)
  if "fid" in names or "kid" in names:
    timed("fid_kid", _fid_kid, model, config, spec, feature_model, names, report)
  if "inpaint" in names:
    timed("inpaint", _inpaint, model, spec, test_images, feature_model, masks, report)
  if "svm" in names:
    timed("svm", _svm, model, config, spec, report)
  t = time.perf_counter()
  stats = _code_statistics(model, test_images, report)
  tf.io.gfile.makedirs(out_dir)
  drawn = _figures(model, test_images, masks, stats, out_dir)
  report["figures"] = {name: f"{name}.png" for name in drawn}
  report["seconds"]["figures"] = time.perf_counter() - t
  report["seconds"]["total"] = time.perf_counter() - began
  _summaries(eval_root, step or 0, report, drawn)
  files.atomic_write(os.path.join(out_dir, METRICS_FILE),
                     json.dumps(report, indent=2, sort_keys=True, default=_json) + "\n")
  return report, out_dir


class _Served:
  """The served statistics' settings, calibration inputs and description."""

  def __init__(self, settings, calibration, info):
    self.settings, self.calibration, self.info = settings, calibration, info


def _served_statistics(model, config, spec):
  """The model as it serves (the run's --bn_statistics, or this command's), and a _Served."""
  settings = inference_statistics.settings_from_flags(config, FLAGS)
  calibration = inference_statistics.calibration_for(config, settings, spec)
  served, info = inference_statistics.prepare(model, config, settings, calibration=calibration)
  return served, _Served(settings, calibration, info)


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
    report, out_dir = evaluate(FLAGS.model_dir)
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
