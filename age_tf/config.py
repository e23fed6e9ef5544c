"""Command-line flags and the resolved, validated run configuration they produce."""

import dataclasses
import json
import os
import tempfile

from absl import flags

from age_tf import data
from age_tf import divergences
from age_tf.errors import UserError
from age_tf.methods import METHODS
from age_tf.methods.base import PRIORS

STRATEGIES = ("auto", "mirrored", "one_device")

# ---------------------------------------------------------------- flags
# Defaults of None are resolved per method and dataset (the paper's values).

flags.DEFINE_string("method", "age", f"Training method: {', '.join(METHODS)}.")
flags.DEFINE_string("dataset", "digits",
                    f"Dataset: {', '.join(data.DATASET_NAMES)}. digits (scikit-learn's, "
                    "bundled) needs no network.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory "
                    "(default: tfds's own, ~/tensorflow_datasets).")
flags.DEFINE_bool("download", True, "Download and prepare a tfds dataset that is not in "
                  "--data_dir (fails within seconds when offline).")
flags.DEFINE_enum("svhn_split", "train", list(data.SVHN_SPLITS),
                  "SVHN training split; train+extra adds the 531k 'extra' images.")
flags.DEFINE_integer("image_size", None, "Image size the networks see (32 or 64); "
                     "default: the dataset's (folder: 32).")
flags.DEFINE_integer("channels", None, "Channels of folder: images (1 or 3, default 3).")
flags.DEFINE_enum("cache", "auto", list(data.CACHE_MODES),
                  "Cache decoded training images in memory: auto (when they fit in a "
                  "quarter of RAM), memory, none.")
flags.DEFINE_integer("shuffle_buffer", 10000, "Shuffle buffer size (examples).")

flags.DEFINE_integer("latent_dim", None, "Latent dimension M (default: the paper's "
                     "per dataset: mnist 10, svhn 64, celeba 64, cifar10 128, folder 128, "
                     "digits 10).")
flags.DEFINE_enum("prior", "sphere", list(PRIORS), "Latent prior: uniform on the unit "
                  "sphere (paper) or N(0, I) (the paper's alternative).")
flags.DEFINE_integer("width", None, "Base width of the DCGAN networks (the authors' ngf = "
                     "ndf; default 64, digits 16).")

flags.DEFINE_enum("kl_estimator", "moments", list(divergences.KL_ESTIMATORS),
                  "KL(Q || N(0, I)) estimator: moments (paper eq. 8, parametric) or knn "
                  "(Kozachenko-Leonenko, paper 3.1).")
flags.DEFINE_enum("kl_reduction", "mean", list(divergences.REDUCTIONS),
                  "Average the KL over latent dimensions (authors' code) or sum (eq. 8).")
flags.DEFINE_enum("x_recon_loss", "l1", ["l1", "l2"], "Data-space reconstruction loss: "
                  "l1 (authors' code) or l2, mean squared error (paper eq. 3).")
flags.DEFINE_enum("z_recon_loss", "cos", list(divergences.RECONSTRUCTION_LOSSES),
                  "Latent reconstruction loss: cos (authors' code) or l2, mean squared "
                  "error (paper eq. 4), or l1.")
flags.DEFINE_float("x_recon_weight", 10.0, "mu: weight of the data reconstruction loss "
                   "in the encoder objective (0 with --z_recon_weight=0: Fig. 2c ablation).")
flags.DEFINE_float("z_recon_weight", None, "lambda: weight of the latent reconstruction "
                   "loss in the generator objective (default: the paper's 1000; digits 100).")
flags.DEFINE_float("generator_x_recon_weight", 0.0, "Weight of the data reconstruction "
                   "loss in the generator objective (paper Fig. 9 ablation; 0 = off).")
flags.DEFINE_integer("generator_steps", None, "Generator updates per encoder update "
                     "(default: 2, CelebA 3).")

flags.DEFINE_integer("batch_size", 64, "Global batch size (split across replicas).")
flags.DEFINE_float("learning_rate", None, "Adam learning rate for both networks (default: "
                   "the paper's 2e-4; digits 1e-3).")
flags.DEFINE_float("beta1", 0.5, "Adam beta_1.")
flags.DEFINE_float("beta2", 0.999, "Adam beta_2.")
flags.DEFINE_float("adam_epsilon", 1e-8, "Adam epsilon (PyTorch's default; Keras's is 1e-7).")
flags.DEFINE_integer("lr_decay_epochs", None, "Multiply the learning rate by "
                     "--lr_decay_factor every this many epochs (authors' drop_lr; 0 = never).")
flags.DEFINE_float("lr_decay_factor", 0.5, "Learning-rate decay factor.")
flags.DEFINE_float("epochs", None, "Training length in epochs of num_train // batch_size "
                   "steps (default: the paper's per dataset).")
flags.DEFINE_integer("train_steps", None, "Training length in steps; overrides --epochs.")
flags.DEFINE_integer("seed", 123, "Random seed (weights, prior draws, data order).")

flags.DEFINE_string("model_dir", None, "Directory for checkpoints, TensorBoard events, "
                    "images and flags.json (default: <tmp>/age_tf/<method>_<dataset>). "
                    "Rerunning with the same directory resumes.")
flags.DEFINE_enum("strategy", "auto", list(STRATEGIES), "tf.distribute strategy: auto "
                  "(mirrored over local GPUs, else the single default device), mirrored, "
                  "one_device.")
flags.DEFINE_integer("num_cpu_replicas", 1, "Split the CPU into this many logical devices "
                     "(mirrored replicas on a machine without GPUs).")
flags.DEFINE_integer("steps_per_loop", 10, "Training steps per tf.function call.")
flags.DEFINE_integer("log_every", 50, "Write scalar summaries every this many steps.")
flags.DEFINE_integer("image_every", 500, "Write sample and reconstruction grids every this "
                     "many steps.")
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every this many steps.")
flags.DEFINE_integer("keep_checkpoints", 5, "How many recent checkpoints to keep.")

# Flags that fix the shapes of the saved variables: a model_dir written with
# other values cannot be resumed.
IDENTITY_KEYS = ("method", "image_size", "channels", "latent_dim", "prior", "width")


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run needs, resolved and validated."""
  method: str
  dataset: str
  data_dir: str
  download: bool
  svhn_split: str
  image_size: int
  channels: int
  cache: str
  shuffle_buffer: int
  latent_dim: int
  prior: str
  width: int
  kl_estimator: str
  kl_reduction: str
  x_recon_loss: str
  z_recon_loss: str
  x_recon_weight: float
  z_recon_weight: float
  generator_x_recon_weight: float
  generator_steps: int
  batch_size: int
  learning_rate: float
  beta1: float
  beta2: float
  adam_epsilon: float
  lr_decay_epochs: int
  lr_decay_factor: float
  epochs: float
  train_steps: int
  seed: int
  model_dir: str
  strategy: str
  num_cpu_replicas: int
  steps_per_loop: int
  log_every: int
  image_every: int
  checkpoint_every: int
  keep_checkpoints: int
  # Derived from the dataset:
  num_train: int
  steps_per_epoch: int

  def to_json(self):
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  def identity(self):
    return {k: getattr(self, k) for k in IDENTITY_KEYS}


FLAG_NAMES = tuple(f.name for f in dataclasses.fields(Config)
                   if f.name not in ("num_train", "steps_per_epoch"))


def from_flags(flag_values=flags.FLAGS):
  return resolve({name: flag_values[name].value for name in FLAG_NAMES})


def resolve(values):
  """Builds a Config from flag values (a dict; missing keys take the flag defaults).

  Fills the per-dataset defaults, validates every value and combination,
  and raises UserError naming the problem and the fix.
  """
  raw = {name: flags.FLAGS[name].default for name in FLAG_NAMES}
  unknown = set(values) - set(raw)
  if unknown:
    raise UserError(f"Unknown settings: {sorted(unknown)}.")
  raw.update(values)

  if raw["method"] not in METHODS:
    raise UserError(f"Unknown --method={raw['method']!r}; valid methods: {', '.join(METHODS)}.")
  spec = data.get_spec(raw["dataset"], raw["image_size"], raw["channels"], raw["svhn_split"])
  defaults = METHODS[raw["method"]].paper_defaults(spec)
  for key, value in defaults.items():
    if raw.get(key) is None:
      raw[key] = value
  raw["image_size"], raw["channels"] = spec.image_size, spec.channels
  if not raw["model_dir"]:
    safe = raw["dataset"].replace(data.FOLDER_PREFIX, "folder_").replace(os.sep, "_")
    raw["model_dir"] = os.path.join(tempfile.gettempdir(), "age_tf", f"{raw['method']}_{safe}")
  raw["data_dir"] = raw["data_dir"] or ""

  _check_positive(raw, "batch_size", "latent_dim", "width", "generator_steps", "steps_per_loop",
                  "log_every", "image_every", "checkpoint_every", "keep_checkpoints",
                  "num_cpu_replicas", "shuffle_buffer")
  _check_non_negative(raw, "x_recon_weight", "z_recon_weight", "generator_x_recon_weight",
                      "lr_decay_epochs", "learning_rate")
  if raw["image_size"] not in (32, 64):
    raise UserError(f"--image_size={raw['image_size']} is not supported; the AGE networks "
                    "take 32 or 64.")
  if not 0.0 < raw["lr_decay_factor"] <= 1.0:
    raise UserError(f"--lr_decay_factor={raw['lr_decay_factor']} must be in (0, 1].")
  if raw["batch_size"] > spec.num_train:
    raise UserError(f"--batch_size={raw['batch_size']} is larger than the {spec.num_train} "
                    f"training images of {spec.name}; use a smaller batch.")
  if raw["kl_estimator"] == "knn" and raw["batch_size"] < 2:
    raise UserError("--kl_estimator=knn needs --batch_size of at least 2.")

  steps_per_epoch = spec.num_train // raw["batch_size"]
  if raw["train_steps"] is None:
    if raw["epochs"] is None or raw["epochs"] <= 0:
      raise UserError("Give a positive --epochs or --train_steps.")
    raw["train_steps"] = max(1, int(round(raw["epochs"] * steps_per_epoch)))
  elif raw["train_steps"] <= 0:
    raise UserError(f"--train_steps={raw['train_steps']} must be positive.")
  return Config(num_train=spec.num_train, steps_per_epoch=steps_per_epoch, **raw)


def _check_positive(raw, *names):
  for name in names:
    if raw[name] is None or raw[name] <= 0:
      raise UserError(f"--{name}={raw[name]} must be a positive number.")


def _check_non_negative(raw, *names):
  for name in names:
    if raw[name] is None or raw[name] < 0:
      raise UserError(f"--{name}={raw[name]} must not be negative.")


def dataset_spec(config):
  """The DatasetSpec a Config was resolved against."""
  return data.get_spec(config.dataset, config.image_size, config.channels, config.svhn_split)
