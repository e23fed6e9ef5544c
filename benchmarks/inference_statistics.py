"""Served versus trained reconstructions, per checkpoint, through the exported SavedModel.

    # a folder of 32x32 natural-image patches from scikit-learn's two sample photographs
    python benchmarks/inference_statistics.py --make_folder=/tmp/patches
    # train (any age_tf.train flags), then print the table of every kept checkpoint
    python benchmarks/inference_statistics.py --train --method=age --dataset=folder:/tmp/patches \\
        --train_steps=600 --checkpoint_every=100 --keep_checkpoints=50 --model_dir=/tmp/bn_age
    # or the table of a run trained before
    python benchmarks/inference_statistics.py --model_dir=/tmp/bn_age

The folder: china.jpg and flower.jpg (427x640), 32x32 patches at stride 8;
training patches from columns 0-447 of each photograph (5300), held-out
ones from columns 480-639 (1700), so no held-out pixel was seen in training.

For each checkpoint the table gives, over the error of predicting every
held-out image by the mean training image ("x mean image"; below 1 beats
that constant):

* reconstruction error (pixel MSE) of the held-out images
  - training mode: the Keras networks in training mode, each batch of
    --batch_size held-out images (seeded random order) normalised by its
    own statistics: what training's losses saw;
  - moving, recompute_shared, recompute: the `reconstruct` signature of the
    export with that --bn_statistics (the run's other settings), loaded by
    tf.saved_model.load;
* sample drift: the mean squared difference between the export's
  `generate` on prior draws (--drift_batches of --batch_size) and the
  generator in training mode on the same batches (what training shaped).

With --fractions the checkpoints at --fraction_steps are also exported with
--bn_statistics=recompute_shared for each prior fraction given.

--real_only_encoder_statistics (AGE, with --train): training updates the
encoder's moving statistics from its real batches only (its calls on g(z)
leave them as they were), the other candidate fix, measured in the moving
column. Not run in CI.
"""

import contextlib
import dataclasses
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

from age_tf import checkpointing
from age_tf import config as config_lib  # the training flags
from age_tf import data
from age_tf import export
from age_tf import inference_statistics
from age_tf import loop
from age_tf.methods import METHODS
from age_tf.methods import age as age_lib

flags.DEFINE_string("make_folder", None, "Write the folder of patches here and exit.")
flags.DEFINE_bool("train", False, "Train --model_dir first (with the age_tf.train flags given).")
flags.DEFINE_bool("real_only_encoder_statistics", False, "With --train and --method=age: the "
                  "encoder's moving statistics follow its real batches only.")
flags.DEFINE_list("fractions", [], "--bn_statistics=recompute_shared prior fractions to "
                  "compare (e.g. 0,0.5,1), at --fraction_steps.")
flags.DEFINE_list("fraction_steps", [], "Checkpoint steps for --fractions (default: all).")
flags.DEFINE_integer("drift_batches", 10, "Prior batches of --batch_size for the sample drift.")
flags.DEFINE_string("json_out", None, "Also write the numbers here as JSON.")
FLAGS = flags.FLAGS

PATCH, STRIDE = 32, 8
TRAIN_COLUMNS, HELD_OUT_COLUMNS = (0, 448), (480, 640)


def make_folder(out):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from sklearn.datasets import load_sample_images  # pylint: disable=g-import-not-at-top
  photos = load_sample_images()
  counts = {}
  for split, (first, last) in (("train", TRAIN_COLUMNS), ("val", HELD_OUT_COLUMNS)):
    os.makedirs(os.path.join(out, split), exist_ok=True)
    counts[split] = 0
    for name, image in zip(photos.filenames, photos.images):
      stem = os.path.splitext(os.path.basename(name))[0]
      for y in range(0, image.shape[0] - PATCH + 1, STRIDE):
        for x in range(first, last - PATCH + 1, STRIDE):
          Image.fromarray(image[y:y + PATCH, x:x + PATCH]).save(
              os.path.join(out, split, f"{stem}_{y:03d}_{x:03d}.png"))
          counts[split] += 1
  print(f"wrote {counts['train']} training and {counts['val']} held-out patches under {out}")


# ---------------------------------------------------------------- the real-only variant


class RealOnlyAGE(age_lib.AGE):
  """AGE whose encoder's moving statistics are updated by its real batches only."""

  @contextlib.contextmanager
  def _encoder_statistics_frozen(self):
    variables = [v for layer in inference_statistics.batch_norm_layers(self.encoder)
                 for v in (layer.moving_mean, layer.moving_variance)]
    saved = [tf.identity(v.value) for v in variables]
    yield
    for variable, value in zip(variables, saved):
      variable.assign(value)

  def encoder_step(self, images):
    """AGE.encoder_step with the e(g(z)) call's statistics update undone."""
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
      with self._encoder_statistics_frozen():
        kl_fake, _, _ = self._kl(self.encoder(fake, training=True))
      loss -= kl_fake
    self.apply_gradients(self.encoder_optimizer, tape, loss,
                         self.encoder.trainable_variables)
    code_stats = age_lib._code_stats  # pylint: disable=protected-access
    metrics.update({"encoder/loss": loss, "encoder/kl_real": kl_real, "encoder/kl_fake": kl_fake},
                   **code_stats("real", real_mean, real_var))
    return metrics

  def generator_step(self, batch_size, images=None):
    with self._encoder_statistics_frozen():
      return super().generator_step(batch_size, images)


# ---------------------------------------------------------------- measuring


def held_out(config):
  spec = config_lib.dataset_spec(config)
  test = np.concatenate([x.numpy() for x, _ in data.test_dataset(spec, 500, config.data_dir
                                                                 or None, config.download)])
  train = np.concatenate([data.to_float(b["image"]).numpy() for b in data.source(
      spec, "train", config.data_dir or None, config.download).batch(1000)])
  mean_error = float(np.mean(np.square((test - train.mean(0)) / 2.0)))
  return test, mean_error


def exported(model_dir, checkpoint, settings, work_dir):
  path = export.export_model(model_dir, work_dir, settings=settings, checkpoint=checkpoint)
  return tf.saved_model.load(path)


def served_error(loaded, test):
  """Pixel MSE in [0, 1] of the export's `reconstruct` on the held-out images."""
  total = 0.0
  for i in range(0, len(test), 500):
    images = test[i:i + 500]
    outputs = loaded.signatures["reconstruct"](images=tf.constant(images))["reconstructions"]
    total += float(np.sum(np.square((outputs.numpy() - images) / 2.0)))
  return total / test.size


def training_mode_error(model, test, batch_size):
  """The same in training mode: batches of `batch_size` in a seeded random order."""
  shuffled = test[np.random.default_rng(0).permutation(len(test))]
  reconstruct = tf.function(lambda x: model.reconstruct(x, training=True))
  total = 0.0
  with inference_statistics.preserved(model):
    for i in range(0, len(shuffled), batch_size):
      images = shuffled[i:i + batch_size]
      total += float(np.sum(np.square((reconstruct(tf.constant(images)).numpy() - images) / 2.0)))
  return total / test.size


def prior_batches(config, count):
  rng = np.random.default_rng(7)
  z = rng.standard_normal((count * config.batch_size, config.latent_dim)).astype(np.float32)
  if config.prior == "sphere":
    z /= np.linalg.norm(z, axis=1, keepdims=True)
  return z


def sample_drift(loaded, model, z, batch_size):
  generate = tf.function(lambda c: model.generate(c, training=True))
  total = 0.0
  with inference_statistics.preserved(model):
    for i in range(0, len(z), batch_size):
      codes = tf.constant(z[i:i + batch_size])
      served = loaded.signatures["generate"](codes=codes)["images"].numpy()
      total += float(np.mean(np.square((served - generate(codes).numpy()) / 2.0))) * len(codes)
  return total / len(z)


def checkpoint_paths(model_dir):
  state = tf.train.get_checkpoint_state(checkpointing.checkpoint_dir(model_dir))
  return list(state.all_model_checkpoint_paths) if state else []


MODES = (("moving", "moving"), ("shared", "recompute_shared"), ("recompute", "recompute"))


def _scores(model_dir, path, settings, model, test, z, config, mean_error, work_dir):
  loaded = exported(model_dir, path, settings, work_dir)
  return (served_error(loaded, test) / mean_error,
          sample_drift(loaded, model, z, config.batch_size) / mean_error)


def table(model_dir):
  config = checkpointing.saved_config(model_dir)
  test, mean_error = held_out(config)
  run = inference_statistics.settings_of(config)
  z = prior_batches(config, FLAGS.drift_batches)
  rows, work_dir = [], tempfile.mkdtemp(prefix="bn_exports_")
  print(f"\n{config.method} on {config.dataset}: {len(test)} held-out images, mean-image "
        f"error {mean_error:.5f}; statistics pass: {min(run.images, config.num_train)} "
        f"training images, shared prior fraction {run.prior_fraction}. Reconstruction error "
        "and sample drift through the export, x mean-image error.\n")
  print("| step | training mode | moving | recompute_shared | recompute | recompute / training "
        "| drift: moving | shared | recompute |")
  print("|---|---|---|---|---|---|---|---|---|")
  for path in checkpoint_paths(model_dir):
    _, model, step = checkpointing.load_model(model_dir, path)
    trained = training_mode_error(model, test, config.batch_size) / mean_error
    row = dict(step=step, training=trained)
    for label, mode in MODES:
      row[label], row[f"{label}_drift"] = _scores(
          model_dir, path, dataclasses.replace(run, mode=mode), model, test, z, config,
          mean_error, work_dir)
    rows.append(row)
    print(f"| {step} | {trained:.3f} | {row['moving']:.3f} | {row['shared']:.3f} | "
          f"{row['recompute']:.3f} | {row['recompute'] / trained:.2f} | "
          f"{row['moving_drift']:.3f} | {row['shared_drift']:.3f} | "
          f"{row['recompute_drift']:.3f} |", flush=True)
  result = {"config": dataclasses.asdict(config), "mean_error": mean_error, "rows": rows}
  if FLAGS.fractions:
    wanted = [int(s) for s in FLAGS.fraction_steps] if FLAGS.fraction_steps else None
    print("\n--bn_statistics=recompute_shared: the generator's prior fraction "
          "(reconstruction / sample drift, x mean-image error)\n")
    print("| step | " + " | ".join(f"f = {f}" for f in FLAGS.fractions) + " |")
    print("|---|" + "---|" * len(FLAGS.fractions))
    fractions = []
    for path in checkpoint_paths(model_dir):
      _, model, step = checkpointing.load_model(model_dir, path)
      if wanted is not None and step not in wanted:
        continue
      cells = []
      for f in FLAGS.fractions:
        recon, drift = _scores(model_dir, path, dataclasses.replace(
            run, mode="recompute_shared", prior_fraction=float(f)), model, test, z, config,
                               mean_error, work_dir)
        fractions.append(dict(step=step, fraction=float(f), reconstruction=recon, drift=drift))
        cells.append(f"{recon:.3f} / {drift:.3f}")
      print(f"| {step} | " + " | ".join(cells) + " |", flush=True)
    result["fractions"] = fractions
  if FLAGS.json_out:
    with open(FLAGS.json_out, "w") as f:
      json.dump(result, f, indent=2)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if FLAGS.make_folder:
    make_folder(FLAGS.make_folder)
    return
  if not FLAGS.model_dir:
    raise app.UsageError("--model_dir is required (or --make_folder).")
  if FLAGS.train:
    config = config_lib.from_flags()
    if FLAGS.real_only_encoder_statistics:
      if config.method != "age":
        raise app.UsageError("--real_only_encoder_statistics is for --method=age.")
      METHODS["age"] = RealOnlyAGE
    logging.set_verbosity(logging.INFO)
    loop.train(config)
    logging.set_verbosity(logging.WARNING)
  table(FLAGS.model_dir)


if __name__ == "__main__":
  app.run(main)
