"""Trains every method on digits, evaluates each, prints one markdown table.

    python benchmarks/quality.py                         # 920 steps (AGE's digits default), all methods
    python benchmarks/quality.py --train_steps=200 --svm_repeats=20 --methods=age,gali4
    python benchmarks/quality.py --budgets=gali4:4000,ali:4000 --seeds=123,124
    python benchmarks/quality.py --methods=gali4 --train_args=--width=16 --work_dir=/tmp/wide

For each method and seed: `python -m age_tf.train --method=M --dataset=digits
--train_steps=N --seed=S` (N from --budgets, else --train_steps; the
method's digits defaults otherwise; its wall clock is the train time), then
`python -m age_tf.evaluate` with one shared digits classifier as the
feature model (trained once here, seed 0; GALI-PT's own M is a second
classifier, seed 1, so it is not scored by the model it trained against).
The methods of --multi_seed_methods run every seed of --seeds, the others
the first.

Reconstruction is also measured as a user meets it, through the run's
exported SavedModel (its `reconstruct` signature): the test pixel MSE of
G(E(x)) against x ("own"), against another test image ("shuffled": a
reconstruction that carries its own digit is far closer to x than to
another digit), and divided by the error of predicting the mean training
image. So are the codes: the SVM protocol on the export's `encode` output
alone (the "code SVM" column; the protocol's own features add the
encoder's last three hidden layers). Inpainting is evaluate's `inpaint`
(uniform random rectangles, each run's own --mask_fill: -1 unless it
trained with masks). Four rows give the numbers a floor: the untrained
model of the first method (its initial weights, `evaluate --untrained`),
PCA with M = 10 components fitted on the training images (reconstruction
x -> mean + P P^T (x - mean), samples from N(mean, P diag(var) P^T), SVM
features its 10 coordinates), raw pixels (the SVM on the 1024 pixels, in
both SVM columns) and the mean training image (reconstruction and
inpainting errors only).

Runs are kept in --work_dir: rerunning skips trained models and reuses
their train time and evaluations (use a new --work_dir when the evaluation
settings change). Not run in CI. Writes quality.md and quality.json there.
"""

import functools
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags

from age_tf import data
from age_tf import features
from age_tf.methods import METHODS
from age_tf.metrics import classifier_distances
from age_tf.metrics import inpainting
from age_tf.metrics import reconstruction
from age_tf.metrics import svm

flags.DEFINE_integer("train_steps", 920, "Training steps of every method (AGE's digits "
                     "default, 40 epochs; the ALI family's are 2,001, GALI-8's 4,002 and "
                     "GALI-4's and GALI-mix's 5,014).")
flags.DEFINE_list("budgets", [], "Per-method training steps, METHOD:STEPS (overrides "
                  "--train_steps for that method).")
flags.DEFINE_list("seeds", ["123"], "--seed of the training runs (the first for methods not "
                  "in --multi_seed_methods).")
flags.DEFINE_list("multi_seed_methods", ["ali", "alice", "gali4"], "Methods trained with every "
                  "seed of --seeds.")
flags.DEFINE_list("methods", list(METHODS), "Methods to train and evaluate.")
flags.DEFINE_list("train_args", [], "Further age_tf.train flags for every run, e.g. "
                  "--train_args=--width=16,--latent_dim=16 (use a --work_dir of their own: run "
                  "directories are named by method, seed and steps only).")
flags.DEFINE_string("work_dir", os.path.join(tempfile.gettempdir(), "age_tf", "quality"),
                    "Where the runs, classifiers and the table are kept.")
flags.DEFINE_integer("svm_repeats", 100, "SVM protocol repeats (the papers' 100).")
flags.DEFINE_integer("num_fid_samples", 1000, "FID/KID generated samples and real images.")
flags.DEFINE_integer("classifier_epochs", 10, "Epochs of the digits classifiers.")
flags.DEFINE_integer("checkpoint_every", 0, "If > 0, every run keeps a checkpoint every this "
                     "many steps (all of them), so benchmarks/checkpoint_curve.py can show "
                     "its curve and where it plateaus.")
FLAGS = flags.FLAGS

# The evaluation protocol for digits (the evaluate defaults, passed explicitly
# so the PCA row uses the very same).
SVM_PER_CLASS, SVM_VALIDATION, SVM_GRID = 10, 300, svm.PAPER_GRID_SIZE
PCA_COMPONENTS = 10
BATCH = 100


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=ROOT)
  began = time.perf_counter()
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
  if result.returncode:
    sys.stderr.write(result.stderr[-5000:])
    raise SystemExit(f"{module} {' '.join(args)} failed ({result.returncode}).")
  return time.perf_counter() - began


def _classifier(name, seed):
  path = os.path.join(FLAGS.work_dir, name)
  if not os.path.exists(os.path.join(path, features.CLASSIFIER_FILE)):
    print(f"training {name} (seed {seed})...", flush=True)
    _run("age_tf.classifier", "--dataset=digits", f"--model_dir={path}", f"--seed={seed}",
         f"--epochs={FLAGS.classifier_epochs}")
  return path


def _budgets():
  """{method: training steps}: --budgets over --train_steps."""
  steps = {m: FLAGS.train_steps for m in FLAGS.methods}
  for item in FLAGS.budgets:
    method, _, value = item.partition(":")
    if method not in METHODS or not value.isdigit():
      raise SystemExit(f"--budgets entry {item!r} is not METHOD:STEPS with a known method.")
    steps[method] = int(value)
  return steps


def _train(method, steps, seed, pt_classifier):
  model_dir = os.path.join(FLAGS.work_dir, f"{method}_s{seed}_n{steps}")
  timing = os.path.join(model_dir, "train_seconds.json")
  if os.path.exists(timing):
    with open(timing) as f:
      return model_dir, json.load(f)["seconds"]
  print(f"training {method} (seed {seed}) for {steps} steps...", flush=True)
  extra = [f"--feature_model={pt_classifier}"] if method == "gali_pt" else []
  if FLAGS.checkpoint_every > 0:
    extra += [f"--checkpoint_every={FLAGS.checkpoint_every}",
              f"--keep_checkpoints={steps // FLAGS.checkpoint_every + 1}"]
  seconds = _run("age_tf.train", f"--method={method}", "--dataset=digits",
                 f"--train_steps={steps}", f"--seed={seed}", f"--model_dir={model_dir}",
                 *extra, *FLAGS.train_args)
  with open(timing, "w") as f:
    json.dump({"train_steps": steps, "seed": seed, "seconds": seconds}, f)
  return model_dir, seconds


def _test_images():
  test = data.labelled_dataset(data.get_spec("digits"), "test", 1000)
  return np.concatenate([x.numpy() for x, _ in test])


class MeanImage:
  """Reconstructs (and so inpaints) every image as the mean training image."""

  def __init__(self, mean):
    self.mean = tf.constant(mean, tf.float32)

  def reconstruct(self, images, training=False):
    return tf.broadcast_to(self.mean, tf.shape(images))


def _mean_image_row(test_x):
  """Pixel MSE in [0, 1] of predicting every test image, and every masked region, by the mean
  training image (the inpainting evaluation's masks)."""
  train = data.labelled_dataset(data.get_spec("digits"), "train", 1000)
  mean = np.concatenate([x.numpy() for x, _ in train]).mean(0)
  inpainted = inpainting.inpainting_errors(MeanImage(mean), test_x, seed=0, batch_size=BATCH)
  return {"recon/pixel_mse": float(np.mean(np.square((test_x - mean) / 2.0))),
          "inpaint/pixel_mse": inpainted["pixel_mse"][0]}


def _newest_export(model_dir):
  export_dir = os.path.join(model_dir, "export")
  version = max(int(v) for v in os.listdir(export_dir) if v.isdigit())
  return tf.saved_model.load(os.path.join(export_dir, str(version)))


def _served_reconstruction(model_dir, test_x):
  """Own and shuffled test pixel MSE of the newest export's `reconstruct` signature."""
  reconstruct = _newest_export(model_dir).signatures["reconstruct"]
  recon = np.concatenate([reconstruct(images=tf.constant(test_x[i:i + BATCH]))[
      "reconstructions"].numpy() for i in range(0, len(test_x), BATCH)])
  own = float(np.mean(np.square((recon - test_x) / 2.0)))
  # Against another test image: the next one (a digit of another class 9 times in 10).
  shuffled = float(np.mean(np.square((recon - np.roll(test_x, 1, axis=0)) / 2.0)))
  return own, shuffled


@functools.lru_cache(maxsize=1)
def _svm_pools():
  """The SVM protocol's (pool, pool labels, validation, validation labels, test, test labels)."""
  return svm.protocol_arrays(data.get_spec("digits"), SVM_VALIDATION)


def _svm(featurize):
  """The SVM protocol (--svm_repeats, 10 labels per class, C on validation) on `featurize`."""
  result = svm.linear_svm_error(*_svm_pools(), per_class=SVM_PER_CLASS,
                                repeats=FLAGS.svm_repeats, c_values=svm.c_grid(SVM_GRID),
                                seed=0, featurize=featurize)
  return result["error"], result["error_std"]


def _served_code_svm(model_dir):
  """The SVM protocol on the codes alone, from the newest export's `encode` signature."""
  encode = _newest_export(model_dir).signatures["encode"]
  return _svm(lambda x: np.concatenate([encode(images=tf.constant(x[i:i + BATCH]))[
      "codes"].numpy() for i in range(0, len(x), BATCH)]))


def _evaluate(model_dir, classifier, steps, untrained=False):
  sub = "untrained" if untrained else str(steps)
  report = os.path.join(model_dir, "eval", sub, "metrics.json")
  metrics = "recon,fid,kid,svm,inpaint"
  if os.path.exists(report):  # evaluated by an earlier invocation: reuse it
    with open(report) as f:
      done = json.load(f)["metrics"]
    if "inpaint/pixel_mse" in done:
      return done
    metrics = "inpaint"  # an evaluation made before inpainting was in the table; keeps the rest
  print(f"evaluating {model_dir}{' (untrained)' if untrained else ''}: {metrics}...", flush=True)
  _run("age_tf.evaluate", f"--model_dir={model_dir}", f"--feature_model={classifier}",
       f"--svm_repeats={FLAGS.svm_repeats}", f"--svm_per_class={SVM_PER_CLASS}",
       f"--svm_validation={SVM_VALIDATION}", f"--svm_grid_size={SVM_GRID}",
       f"--num_fid_samples={FLAGS.num_fid_samples}", f"--metrics={metrics}",
       *(["--untrained"] if untrained else []))
  with open(report) as f:
    return json.load(f)["metrics"]


class PCAModel:
  """PCA as an encoder-generator pair: whitened coordinates, prior N(0, I)."""

  prior = "gaussian"

  def __init__(self, train_images, components):
    flat = train_images.reshape(len(train_images), -1).astype(np.float64)
    self.shape = train_images.shape[1:]
    self.mean = flat.mean(0)
    _, s, vt = np.linalg.svd(flat - self.mean, full_matrices=False)
    self.basis = vt[:components]  # (M, pixels)
    self.scale = s[:components] / np.sqrt(len(flat) - 1)  # component std
    self.latent_dim = components

  def encode(self, images, training=False):
    flat = tf.reshape(tf.cast(images, tf.float64), [tf.shape(images)[0], -1])
    return tf.cast((flat - self.mean) @ self.basis.T / self.scale, tf.float32)

  def generate(self, codes, training=False):
    flat = (tf.cast(codes, tf.float64) * self.scale) @ self.basis + self.mean
    images = tf.reshape(tf.cast(flat, tf.float32), [-1, *self.shape])
    return tf.clip_by_value(images, -1.0, 1.0)

  def reconstruct(self, images, training=False):
    return self.generate(self.encode(images))


def _pca_row(classifier):
  spec = data.get_spec("digits")
  began = time.perf_counter()
  train = data.labelled_dataset(spec, "train", 1000)
  train_x = np.concatenate([x.numpy() for x, _ in train])
  model = PCAModel(train_x, PCA_COMPONENTS)
  fit_seconds = time.perf_counter() - began
  test = data.labelled_dataset(spec, "test", 1000)
  test_x = np.concatenate([x.numpy() for x, _ in test])
  feature_model = features.load_feature_model(classifier, 32, 1)
  errors = reconstruction.reconstruction_errors(model, test_x, feature_model, BATCH)
  real = classifier_distances.activations(feature_model, train_x[:FLAGS.num_fid_samples])
  fake = classifier_distances.sample_activations(model, feature_model, FLAGS.num_fid_samples,
                                                 seed=0, batch_size=BATCH)
  distances = classifier_distances.fid_and_kid(real, fake)
  error, std = _svm(lambda x: model.encode(x).numpy())
  inpainted = inpainting.inpainting_errors(model, test_x, seed=0, batch_size=BATCH)
  return {"recon/pixel_mse": errors["pixel_mse"][0], "recon/feature_mse": errors["feature_mse"][0],
          "inpaint/pixel_mse": inpainted["pixel_mse"][0], "fid": distances["fid"],
          "kid": distances["kid"], "kid_std": distances["kid_std"], "svm/error": error,
          "svm/error_std": std, "svm/codes_error": error, "svm/codes_error_std": std}, fit_seconds


def _row(name, seed, steps, m, seconds, mean_mse):
  def number(key, form):
    return format(m[key], form) if key in m else "-"
  own = m.get("served/pixel_mse", m.get("recon/pixel_mse"))
  served = (f"{own:.4f} | {own / mean_mse:.2f} | {number('served/shuffled_pixel_mse', '.4f')}"
            if own is not None else "- | - | -")
  kid = f"{m['kid']:.3f} ± {m['kid_std']:.3f}" if "kid" in m else "-"
  def percent(key):
    return f"{100 * m[key]:.1f} ± {100 * m[key + '_std']:.1f}" if key in m else "-"
  return (f"| {name} | {seed} | {steps} | {served} | {number('recon/feature_mse', '.3f')} | "
          f"{number('inpaint/pixel_mse', '.4f')} | {number('fid', '.1f')} | {kid} | "
          f"{percent('svm/error')} | {percent('svm/codes_error')} | {seconds:.0f} |")


def _raw_pixels_svm():
  """The SVM protocol on raw pixels (the 1024 values)."""
  error, std = _svm(lambda x: np.reshape(x, (len(x), -1)))
  return {"svm/error": error, "svm/error_std": std, "svm/codes_error": error,
          "svm/codes_error_std": std}


def main(argv):
  del argv
  unknown = [m for m in FLAGS.methods if m not in METHODS]
  if unknown:
    raise SystemExit(f"Unknown method(s) {unknown}; valid: {', '.join(METHODS)}.")
  os.makedirs(FLAGS.work_dir, exist_ok=True)
  classifier = _classifier("classifier_eval", 0)
  pt_classifier = _classifier("classifier_pt", 1) if "gali_pt" in FLAGS.methods else None
  budgets, seeds = _budgets(), [int(s) for s in FLAGS.seeds]
  test_x = _test_images()
  mean_image = _mean_image_row(test_x)
  mean_mse = mean_image["recon/pixel_mse"]
  rows, results = [], {}
  for method in FLAGS.methods:
    for seed in (seeds if method in FLAGS.multi_seed_methods else seeds[:1]):
      steps = budgets[method]
      model_dir, seconds = _train(method, steps, seed, pt_classifier)
      metrics = _evaluate(model_dir, classifier, steps)
      metrics["served/pixel_mse"], metrics["served/shuffled_pixel_mse"] = (
          _served_reconstruction(model_dir, test_x))
      metrics["svm/codes_error"], metrics["svm/codes_error_std"] = _served_code_svm(model_dir)
      results[f"{method} s{seed}"] = dict(metrics, train_seconds=seconds, train_steps=steps,
                                          seed=seed)
      rows.append(_row(method, seed, steps, metrics, seconds, mean_mse))
      if not any(k.startswith("untrained") for k in results):
        untrained = _evaluate(model_dir, classifier, steps, untrained=True)
        results[f"untrained {method}"] = dict(untrained, train_seconds=0.0)
  first = next(k for k in results if k.startswith("untrained"))
  rows.append(_row(f"untrained ({first.split()[1]})", seeds[0], 0, results[first], 0.0,
                   mean_mse))
  pca, fit_seconds = _pca_row(classifier)
  results["pca"] = dict(pca, train_seconds=fit_seconds)
  rows.append(_row(f"PCA (M = {PCA_COMPONENTS})", "-", "-", pca, fit_seconds, mean_mse))
  results["raw pixels"] = _raw_pixels_svm()
  rows.append(_row("raw pixels (SVM)", "-", "-", results["raw pixels"], 0.0, mean_mse))
  results["mean image"] = mean_image
  rows.append(_row("mean training image", "-", "-", results["mean image"], 0.0, mean_mse))
  header = [
      f"digits, seeds {', '.join(FLAGS.seeds)}; test split (300 images). Pixel MSE through "
      "the export's `reconstruct` signature, in [0, 1]: of the image itself (own), as a "
      "ratio to predicting the mean training image, and against another test image "
      "(shuffled). Inpainting: the pixel MSE inside uniform random rectangles, the encoder "
      "seeing them filled with -1 (GALI-mix: with its training fill, -2). "
      f"FID/KID: {FLAGS.num_fid_samples} samples against "
      f"{FLAGS.num_fid_samples} training images, features of the digits classifier (512-d); "
      f"SVM: {SVM_PER_CLASS} labels per class, {FLAGS.svm_repeats} repeats, mean ± std of "
      "the test error, on the protocol's features (the encoder's last three hidden layers "
      "and the code) and on the export's codes alone.",
      "",
      "| method | seed | steps | pixel MSE (own) | own / mean image | pixel MSE (shuffled) | "
      "feature MSE | inpainting pixel MSE | FID | KID | SVM error (%) | code SVM error (%) | "
      "train time (s) |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
  ]
  table = "\n".join(header + rows)
  print(table)
  with open(os.path.join(FLAGS.work_dir, "quality.md"), "w") as f:
    f.write(table + "\n")
  with open(os.path.join(FLAGS.work_dir, "quality.json"), "w") as f:
    json.dump(results, f, indent=2, sort_keys=True)


if __name__ == "__main__":
  app.run(main)
