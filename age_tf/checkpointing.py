"""A run directory's checkpoints and flags.json: saving, compatibility checks, restoring."""

import json
import os
import re

import tensorflow as tf
from absl import logging

import age_tf
from age_tf import config as config_lib
from age_tf import files
from age_tf.errors import UserError
from age_tf.methods import METHODS

FLAGS_FILE = "flags.json"
CHECKPOINT_DIR = "checkpoints"
# Where checkpoints that do not restore are moved (kept, never deleted).
DAMAGED_DIR = "damaged"
# The key of flags.json that names the age_tf version that wrote it.
VERSION_KEY = "age_tf_version"
# Settings older versions wrote that this one no longer has (their flags.json still loads).
REMOVED_SETTINGS = ("pt_features",)
# What a checkpoint that does not restore raises: a truncated data file
# (IndexError: "Read less bytes than requested"), a failed checksum
# (DataLossError), a missing shard or index (NotFoundError), a mangled index.
RESTORE_ERRORS = (tf.errors.OpError, IndexError, ValueError, AssertionError)


def checkpoint_dir(model_dir):
  return os.path.join(model_dir, CHECKPOINT_DIR)


def latest_checkpoint(model_dir):
  return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def saved_config(model_dir):
  """The Config a run directory was written with, or None."""
  path = os.path.join(model_dir, FLAGS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  try:
    with tf.io.gfile.GFile(path) as f:
      values = json.load(f)
    if not isinstance(values, dict):
      raise ValueError("not a JSON object")
  except (ValueError, UnicodeDecodeError) as e:
    raise UserError(f"{path} is damaged ({e}); restore it from a backup, or move it aside to "
                    "start a new run in that --model_dir.") from None
  writer = values.pop(VERSION_KEY, "an older version")
  try:
    return config_lib.from_saved({k: v for k, v in values.items() if k not in REMOVED_SETTINGS})
  except TypeError as e:
    raise UserError(f"{path} was written by age_tf {writer} and this is age_tf "
                    f"{age_tf.__version__} ({e}); use age_tf {writer} for that run, or a new "
                    "--model_dir.") from None


def check_compatible(config):
  """Refuses a model_dir whose checkpoints another method or shape wrote (reads only)."""
  previous = saved_config(config.model_dir)
  if previous is not None and latest_checkpoint(config.model_dir):
    theirs, ours = previous.identity(), config.identity()
    diffs = [f"--{k}={theirs[k]} there, --{k}={ours[k]} here" for k in ours if theirs[k] != ours[k]]
    if diffs:
      raise UserError(f"--model_dir={config.model_dir} holds checkpoints of a different model "
                      f"({'; '.join(diffs)}). Use a new --model_dir, or the same flags to "
                      "resume it.")


def save_flags(config):
  """Writes the resolved configuration to model_dir/flags.json (atomically)."""
  tf.io.gfile.makedirs(config.model_dir)
  values = dict(json.loads(config.to_json()), **{VERSION_KEY: age_tf.__version__})
  files.atomic_write(os.path.join(config.model_dir, FLAGS_FILE),
                     json.dumps(values, indent=2, sort_keys=True))


def make_checkpoint(model, step):
  return tf.train.Checkpoint(step=step, **model.checkpoint_items())


def load_model(model_dir, checkpoint=None):
  """Rebuilds the model a run directory describes and restores a checkpoint (default latest).

  Returns (config, model, step).
  """
  config = saved_config(model_dir)
  checkpoint_given = checkpoint is not None
  # A latest checkpoint whose index is gone is no "latest" to TensorFlow; the
  # state file still names it, and restoring it below says it is damaged.
  path = (checkpoint or latest_checkpoint(model_dir)
          or next(iter(_checkpoint_paths(checkpoint_dir(model_dir))), None))
  if config is None or path is None:
    raise UserError(f"--model_dir={model_dir} has no trained model ({FLAGS_FILE} and a "
                    f"checkpoint in {checkpoint_dir(model_dir)}); train one first.")
  model = METHODS[config.method].create(config)
  model.build_optimizers()
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  retried = False
  for _ in range(4):
    # A fresh Checkpoint object per attempt, so that nothing a failed restore
    # bound (e.g. a checkpoint a running trainer rotated away mid-read) carries over.
    checkpoint = make_checkpoint(model, step)
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
      return config, model, int(step.numpy())
    except RESTORE_ERRORS as e:
      newest = None if checkpoint_given else latest_checkpoint(model_dir)
      if newest and newest != path:  # a training run replaced it meanwhile: take the newest
        path = newest
        continue
      if not retried:  # once more, in case a writer was mid-rotation
        retried = True
        continue
      raise UserError(f"Checkpoint {path} does not restore ({_reason(e)}); it is damaged. "
                      f"Pass --checkpoint=N of another one ({_names(model_dir)}), or rerun "
                      "training, which sets damaged checkpoints aside.") from None
  raise UserError(f"The checkpoints of {model_dir} kept changing while loading; try again.")


def _reason(error):
  text = getattr(error, "message", None) or str(error) or type(error).__name__
  return f"{type(error).__name__}: {text.strip().splitlines()[0][:200]}"


def _step_of(path):
  match = re.search(r"ckpt-(\d+)$", path)
  return int(match.group(1)) if match else -1


def _checkpoint_paths(directory):
  """The checkpoints the state file lists, newest first."""
  state = tf.train.get_checkpoint_state(directory)
  if state is None:
    return []
  paths = list(state.all_model_checkpoint_paths)
  if state.model_checkpoint_path and state.model_checkpoint_path not in paths:
    paths.append(state.model_checkpoint_path)
  paths = [p if os.path.isabs(p) else os.path.join(directory, p) for p in paths]
  return sorted(set(paths), key=_step_of, reverse=True)


def _names(model_dir):
  names = [os.path.basename(p) for p in _checkpoint_paths(checkpoint_dir(model_dir))]
  return ", ".join(names) or "none"


def restore_newest(checkpoint, directory, set_aside=True):
  """Restores the newest checkpoint in `directory` that restores; returns its path or None.

  Newer checkpoints that do not restore (truncated, bit-flipped, a missing
  shard or index) are moved to directory/damaged/ (kept, never deleted), each
  with one log line naming it and the checkpoint training falls back to, and
  the state file then lists the checkpoints that remain. When none restores,
  nothing is moved and UserError names them. With set_aside=False (a
  multi-worker run's non-chief workers) damaged ones are skipped, not moved.
  """
  paths = _checkpoint_paths(directory)
  damaged = []
  for path in paths:
    try:
      checkpoint.restore(path).assert_existing_objects_matched()
    except RESTORE_ERRORS as e:
      damaged.append((path, _reason(e)))
      continue
    if not set_aside:
      return path
    for bad, reason in damaged:
      aside = _set_aside(bad, directory)
      logging.warning("Checkpoint %s does not restore (%s); moved to %s. Resuming from %s.",
                      os.path.basename(bad), reason, aside, os.path.basename(path))
    if damaged:
      remaining = [p for p in paths if p not in dict(damaged)]
      tf.compat.v1.train.update_checkpoint_state(directory, path,
                                                 all_model_checkpoint_paths=remaining[::-1])
    return path
  if damaged:
    listed = "; ".join(f"{os.path.basename(p)} ({r})" for p, r in damaged)
    raise UserError(f"No checkpoint in {directory} restores: {listed}. Nothing was moved or "
                    "deleted; restore them from a backup, or use a new --model_dir.")
  return None


def _set_aside(path, directory):
  """Moves a checkpoint's files (path.index, path.data-*) to directory/damaged/."""
  aside = os.path.join(directory, DAMAGED_DIR)
  tf.io.gfile.makedirs(aside)
  for name in tf.io.gfile.glob(path + ".*"):
    target = os.path.join(aside, os.path.basename(name))
    if tf.io.gfile.exists(target):  # the same step damaged before: keep both
      target += f".{os.getpid()}"
    tf.io.gfile.rename(name, target)
  return aside
