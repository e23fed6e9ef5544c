"""A run directory's checkpoints and flags.json: saving, compatibility checks, restoring."""

import dataclasses
import json
import os

import tensorflow as tf

from age_tf import config as config_lib
from age_tf import files
from age_tf.errors import UserError
from age_tf.methods import METHODS

FLAGS_FILE = "flags.json"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(model_dir):
  return os.path.join(model_dir, CHECKPOINT_DIR)


def latest_checkpoint(model_dir):
  return tf.train.latest_checkpoint(checkpoint_dir(model_dir))


def saved_config(model_dir):
  """The Config a run directory was written with, or None."""
  path = os.path.join(model_dir, FLAGS_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    values = json.load(f)
  names = {f.name for f in dataclasses.fields(config_lib.Config)}
  return config_lib.Config(**{k: v for k, v in values.items() if k in names})


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
  files.atomic_write(os.path.join(config.model_dir, FLAGS_FILE), config.to_json())


def make_checkpoint(model, step):
  return tf.train.Checkpoint(step=step, **model.checkpoint_items())


def load_model(model_dir, checkpoint=None):
  """Rebuilds the model a run directory describes and restores a checkpoint (default latest).

  Returns (config, model, step).
  """
  config = saved_config(model_dir)
  path = checkpoint or latest_checkpoint(model_dir)
  if config is None or path is None:
    raise UserError(f"--model_dir={model_dir} has no trained model ({FLAGS_FILE} and a "
                    f"checkpoint in {checkpoint_dir(model_dir)}); train one first.")
  model = METHODS[config.method].from_config(config)
  model.build_optimizers()
  step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  make_checkpoint(model, step).restore(path).assert_existing_objects_matched()
  return config, model, int(step.numpy())
