"""Command-line flags and the resolved, validated run configuration they produce."""

import dataclasses
import json
import math
import os
import tempfile

from absl import flags

from age_tf import data
from age_tf import distribute
from age_tf import inference_statistics
from age_tf.errors import UserError
from age_tf import settings as settings_lib
from age_tf.methods import METHODS
from age_tf.methods.base import PRECISIONS
from age_tf.prior import PRIORS
from age_tf.networks.subpixel import ALGORITHMS as TRANSPOSED_CONV_ALGORITHMS


# ---------------------------------------------------------------- flags
# Defaults of None are resolved per method and dataset (the paper's values).

flags.DEFINE_string("method", "age", f"Training method: {', '.join(METHODS)}. Each method's "
                    "own settings are the flags marked [--method=...].")
flags.DEFINE_string("dataset", "digits",
                    f"Dataset: {', '.join(data.DATASET_NAMES)}. digits (scikit-learn's, "
                    "bundled) needs no network.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory "
                    "(default: tfds's own, ~/tensorflow_datasets).")
flags.DEFINE_bool("download", True, "Download and prepare a tfds dataset that is not in "
                  "--data_dir (fails within seconds when offline).")
flags.DEFINE_enum("svhn_split", None, list(data.SVHN_SPLITS),
                  "SVHN training images: train (73,257), extra (531,131) or train+extra "
                  "(default: the authors' per method).")
flags.DEFINE_integer("image_size", None, "Image size the networks see (32 or 64); "
                     "default: the dataset's (folder: 32).")
flags.DEFINE_integer("channels", None, "Channels of folder: images (1 or 3, default 3).")
flags.DEFINE_enum("cache", "auto", list(data.CACHE_MODES),
                  "Cache decoded training images in memory: auto (when they fit in a "
                  "quarter of RAM), memory, none.")
flags.DEFINE_integer("shuffle_buffer", 10000, "Shuffle buffer size (examples).")

flags.DEFINE_integer("latent_dim", None, "Latent dimension M (default: the paper's per "
                     "method and dataset).")
flags.DEFINE_enum("prior", None, list(PRIORS), "Latent prior: uniform on the unit "
                  "sphere or N(0, I) (default: the method's paper's).")
flags.DEFINE_integer("width", None, "Base width of the method's networks (default: the "
                     "method's per dataset; see docs/methods.md).")

# Every method's own settings (declared in its module) become flags too; a
# flag of another method than --method is refused.
METHOD_SETTINGS = {name: {s.name: s for s in method.settings} for name, method in METHODS.items()}
SETTING_OWNERS = settings_lib.define_flags(
    {name: method.settings for name, method in METHODS.items()})

flags.DEFINE_integer("batch_size", None, "Global batch size, split across replicas "
                     "(default: the paper's per method and dataset).")
flags.DEFINE_float("learning_rate", None, "Adam learning rate for every network (default: "
                   "the paper's per method and dataset).")
flags.DEFINE_float("beta1", 0.5, "Adam beta_1.")
flags.DEFINE_float("beta2", 0.999, "Adam beta_2.")
flags.DEFINE_float("adam_epsilon", 1e-8, "Adam epsilon (PyTorch's default; Keras's is 1e-7).")
flags.DEFINE_integer("lr_decay_epochs", None, "Multiply the learning rate by "
                     "--lr_decay_factor every this many epochs (authors' drop_lr; 0 = never).")
flags.DEFINE_float("lr_decay_factor", 0.5, "Learning-rate decay factor.")
flags.DEFINE_float("epochs", None, "Training length in epochs of num_train // batch_size "
                   "steps (default: the paper's per dataset); folder: datasets train at least "
                   "3,000 steps (a folder of a few thousand images would otherwise get a few "
                   "hundred).")
flags.DEFINE_integer("train_steps", None, "Training length in steps; overrides --epochs.")
flags.DEFINE_integer("seed", 123, "Random seed (weights, prior draws, data order).")
flags.DEFINE_bool("deterministic", False, "Reproducible to the bit on CPU: TensorFlow op "
                  "determinism, and a data order that is a function of --seed and the step, so "
                  "a run stopped and resumed ends with the weights of one that ran straight "
                  "through (resuming then re-reads the data up to the step: seconds per "
                  "epoch done).")
flags.DEFINE_enum("on_nan", "stop", ["stop", "skip"], "When a loss or metric of a step is "
                  "NaN or Inf: stop training with a message naming the step and the loss, "
                  "keeping the last good checkpoint (stop), or skip the step's non-finite "
                  "updates, restore its BatchNorm statistics and count it (skip).")
flags.DEFINE_enum("on_bad_image", "fail", ["fail", "skip"], "folder: datasets: an image file "
                  "that cannot be decoded fails the run naming the file (fail), or is left out "
                  "with a warning that counts them (skip).")
flags.DEFINE_integer("debug_nan_at_step", -1, "For tests of --on_nan: step number whose real "
                     "images are replaced by NaN (-1: none).")

flags.DEFINE_string("model_dir", None, "Directory for checkpoints, TensorBoard events, "
                    "images and flags.json (default: <tmp>/age_tf/<method>_<dataset>). "
                    "Rerunning with the same directory resumes.")
flags.DEFINE_string("strategy", "auto", "tf.distribute strategy: "
                    "auto (mirrored over 2+ local GPUs or --num_cpu_replicas > 1, else one "
                    "device), mirrored, multi_worker (MultiWorkerMirroredStrategy over the "
                    "cluster in TF_CONFIG; the chief writes the run's files), one_device "
                    "(TensorFlow's default strategy: the first GPU, else the CPU).")
flags.DEFINE_integer("num_cpu_replicas", 1, "Split the CPU into this many logical devices "
                     "(mirrored replicas on a machine without GPUs).")
flags.DEFINE_integer("steps_per_loop", 10, "Training steps per tf.function call.")
flags.DEFINE_bool("jit_compile", False, "Compile each training step with XLA (one replica "
                  "only). Whether it pays depends on the machine and precision; "
                  "benchmarks/README.md has measurements.")
flags.DEFINE_enum("mixed_precision", "float32", list(PRECISIONS), "Compute precision of the "
                  "networks: float32, or bfloat16/float16 compute with float32 variables, "
                  "losses and outputs (Keras mixed_* policies; float16 adds dynamic loss "
                  "scaling). Pays off on GPUs, TPUs and CPUs with native bfloat16 (AVX512_BF16, "
                  "AMX).")
flags.DEFINE_enum("transposed_conv", "auto", list(TRANSPOSED_CONV_ALGORITHMS), "How "
                  "transposed convolutions (the generators' layers, every convolution's input "
                  "gradient) are computed: subpixel (one stride-1 convolution to s*s times the "
                  "channels, then depth_to_space; the same numbers), native (TensorFlow's "
                  "Conv2DBackpropInput), auto (subpixel unless a GPU is visible; "
                  "benchmarks/README.md has measurements).")
flags.DEFINE_integer("log_every", 50, "Write scalar summaries every this many steps.")
flags.DEFINE_integer("image_every", 500, "Write sample and reconstruction grids every this "
                     "many steps.")
flags.DEFINE_integer("checkpoint_every", 1000, "Save a checkpoint every this many steps.")
flags.DEFINE_integer("keep_checkpoints", 5, "How many recent checkpoints to keep.")
flags.DEFINE_bool("export", True, "At the end of training, export the encoder and generator "
                  "as a TF Serving SavedModel to --export_dir/VERSION (as `python -m "
                  "age_tf.export` does); --noexport turns it off.")
flags.DEFINE_string("export_dir", None, "Where SavedModel versions 1, 2, ... are written "
                    "(TF Serving's --model_base_path; default: MODEL_DIR/export).")

flags.DEFINE_enum("bn_statistics", inference_statistics.DEFAULT_MODE,
                  list(inference_statistics.MODES), "BatchNorm statistics of the served "
                  "networks (evaluate, the export, training's figures and test/ scalars): "
                  "recompute (population statistics of what each signature is fed: real "
                  "training images through the encoder, prior draws through the generator, "
                  "encodings through reconstruct's generator), recompute_shared (one set for "
                  "the generator from a mix of prior draws and encodings) or moving "
                  "(training's moving averages, as the authors' code). Checkpoints always keep "
                  "the moving averages. See docs/inference_statistics.md.")
flags.DEFINE_integer("bn_statistics_images", inference_statistics.DEFAULT_IMAGES,
                     "--bn_statistics=recompute*: training images (and as many prior draws) "
                     "of the statistics pass (capped at the train split).", lower_bound=1)
flags.DEFINE_float("bn_statistics_prior_fraction", inference_statistics.DEFAULT_PRIOR_FRACTION,
                   "--bn_statistics=recompute_shared: share of the generator's statistics "
                   "codes that are prior draws (what generate and sample are fed); the rest "
                   "are encodings of real images (what reconstruct feeds it).", lower_bound=0.0,
                   upper_bound=1.0)

# A folder: dataset trains at least this many steps unless --train_steps says otherwise:
# the papers' epoch counts are for 100,000+ images (the authors' Tiny ImageNet
# schedule is 9,375 steps), and on a folder of a few thousand images they give a
# few hundred steps, which leaves reconstructions near the mean image.
FOLDER_MIN_TRAIN_STEPS = 3000

# The default --export_dir, under --model_dir.
EXPORT_SUBDIR = "export"

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
  # Export at the end of training (defaulted so flags.json of older runs still loads).
  export: bool = True
  export_dir: str = ""
  # Reliability (defaulted so flags.json of older runs still loads).
  deterministic: bool = False
  on_nan: str = "stop"
  on_bad_image: str = "fail"
  debug_nan_at_step: int = -1
  # Speed (defaulted so flags.json of older runs still loads).
  jit_compile: bool = False
  mixed_precision: str = "float32"
  transposed_conv: str = "auto"
  # Served BatchNorm statistics (defaulted so flags.json of older runs still loads).
  bn_statistics: str = inference_statistics.DEFAULT_MODE
  bn_statistics_images: int = inference_statistics.DEFAULT_IMAGES
  bn_statistics_prior_fraction: float = inference_statistics.DEFAULT_PRIOR_FRACTION
  # The method's own settings ({name: value}, its module's declarations), read
  # as attributes like the shared ones: config.d_steps.
  method_settings: dict = dataclasses.field(default_factory=dict)

  def __getattr__(self, name):  # only called for names that are not fields
    own = self.__dict__.get("method_settings") or {}
    if name in own:
      return own[name]
    raise AttributeError(f"--method={self.__dict__.get('method')} has no setting {name!r}")

  def values(self):
    """Every setting by name, shared and the method's own (what flags.json holds)."""
    shared = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name != "method_settings"}
    return dict(shared, **self.method_settings)

  def to_json(self):
    return json.dumps(self.values(), indent=2, sort_keys=True)

  def replace(self, **changes):
    """A copy with some settings changed, shared or the method's own (not re-validated)."""
    own = {k: v for k, v in changes.items() if k in self.method_settings}
    unknown = set(changes) - set(own) - set(SHARED_NAMES)
    if unknown:
      raise ValueError(f"--method={self.method} has no setting(s) {sorted(unknown)}")
    shared = {k: v for k, v in changes.items() if k not in own}
    return dataclasses.replace(self, method_settings=dict(self.method_settings, **own),
                               **shared)

  def identity(self):
    return {k: getattr(self, k) for k in IDENTITY_KEYS}


# The settings every method shares (Config's fields) and the derived ones.
DERIVED_NAMES = ("num_train", "steps_per_epoch")
SHARED_NAMES = tuple(f.name for f in dataclasses.fields(Config)
                     if f.name not in DERIVED_NAMES + ("method_settings",))
# Every flag a run's configuration reads: the shared settings and every method's own.
FLAG_NAMES = SHARED_NAMES + tuple(n for n in SETTING_OWNERS if n not in SHARED_NAMES)


def from_flags(flag_values=flags.FLAGS):
  return resolve({name: flag_values[name].value for name in FLAG_NAMES})


def resolve(values):
  """Builds a Config from flag values (a dict; missing keys take the flag defaults).

  Fills the per-dataset defaults, validates every value and combination,
  and raises UserError naming the problem and the fix.
  """
  unknown = set(values) - set(FLAG_NAMES)
  if unknown:
    raise UserError(f"Unknown settings: {sorted(unknown)}.")
  raw = {name: flags.FLAGS[name].default for name in SHARED_NAMES}
  raw.update({k: v for k, v in values.items() if k in SHARED_NAMES})

  if raw["method"] not in METHODS:
    raise UserError(f"Unknown --method={raw['method']!r}; valid methods: {', '.join(METHODS)}.")
  method = METHODS[raw["method"]]
  own = METHOD_SETTINGS[raw["method"]]
  for name, value in values.items():  # given, but read only by other methods
    if name not in own and name not in SHARED_NAMES and value is not None:
      raise UserError(f"--{name} applies to --method={', '.join(SETTING_OWNERS[name])}, not "
                      f"to --method={raw['method']}; remove it.")
  if raw["strategy"] not in distribute.STRATEGIES:
    raise UserError(f"Unknown --strategy={raw['strategy']!r}; valid strategies: "
                    f"{', '.join(distribute.STRATEGIES)}.")
  svhn_split = raw["svhn_split"] or "train"
  spec = data.get_spec(raw["dataset"], raw["image_size"], raw["channels"], svhn_split)
  defaults = method.paper_defaults(spec)
  for key, value in defaults.items():
    if key in SHARED_NAMES and raw.get(key) is None:
      raw[key] = value
  for name, setting in own.items():
    given = values.get(name)
    raw[name] = given if given is not None else defaults.get(name, setting.default)
  raw["svhn_split"] = raw["svhn_split"] or "train"
  if raw["svhn_split"] != svhn_split:  # the method's default split (the number of images)
    spec = data.get_spec(raw["dataset"], raw["image_size"], raw["channels"], raw["svhn_split"])
  raw["image_size"], raw["channels"] = spec.image_size, spec.channels
  if not raw["model_dir"]:
    safe = raw["dataset"].replace(data.FOLDER_PREFIX, "folder_").replace(os.sep, "_")
    raw["model_dir"] = os.path.join(tempfile.gettempdir(), "age_tf", f"{raw['method']}_{safe}")
  raw["data_dir"] = raw["data_dir"] or ""
  raw["export_dir"] = raw["export_dir"] or os.path.join(raw["model_dir"], EXPORT_SUBDIR)

  for name, value in raw.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"--{name}={value} must be a finite number.")
  for name, setting in own.items():
    setting.check(raw[name])
  _check_positive(raw, "batch_size", "latent_dim", "width", "steps_per_loop", "log_every",
                  "image_every", "checkpoint_every", "keep_checkpoints", "num_cpu_replicas",
                  "shuffle_buffer")
  _check_non_negative(raw, "lr_decay_epochs", "learning_rate")
  if raw["image_size"] not in (32, 64):
    raise UserError(f"--image_size={raw['image_size']} is not supported; the networks "
                    "take 32 or 64.")
  if not 0.0 < raw["lr_decay_factor"] <= 1.0:
    raise UserError(f"--lr_decay_factor={raw['lr_decay_factor']} must be in (0, 1].")
  if raw["batch_size"] > spec.num_train:
    raise UserError(f"--batch_size={raw['batch_size']} is larger than the {spec.num_train} "
                    f"training images of {spec.name}; use a smaller batch.")
  method.check_settings(raw)

  # An epoch is one pass over the training images; a step may use several batches.
  batches = method.epoch_batches_per_step(_Values(raw))
  steps_per_epoch = max(spec.num_train // (raw["batch_size"] * batches), 1)
  if raw["train_steps"] is None:
    if raw["epochs"] is None or raw["epochs"] <= 0:
      raise UserError("Give a positive --epochs or --train_steps.")
    raw["train_steps"] = max(1, int(round(raw["epochs"] * steps_per_epoch)))
    if spec.source == "folder":  # a few thousand images: a few hundred steps
      raw["train_steps"] = max(raw["train_steps"], FOLDER_MIN_TRAIN_STEPS)
  elif raw["train_steps"] <= 0:
    raise UserError(f"--train_steps={raw['train_steps']} must be positive.")
  return Config(num_train=spec.num_train, steps_per_epoch=steps_per_epoch,
                method_settings={name: raw.pop(name) for name in own}, **raw)


def from_saved(values):
  """The Config of a flags.json (a dict of every setting), as it was resolved then.

  Settings of methods other than the run's (older versions wrote every
  method's, unused ones as null) are dropped; the run's own settings that an
  older version did not write take their declared defaults. Raises TypeError
  for a setting this version does not know.
  """
  method = values.get("method")
  if method not in METHODS:
    raise TypeError(f"--method={method!r} is not one of this version's methods")
  own = METHOD_SETTINGS[method]
  unknown = sorted(set(values) - set(SHARED_NAMES) - set(DERIVED_NAMES) - set(SETTING_OWNERS))
  if unknown:
    raise TypeError(f"settings this version does not know: {', '.join(unknown)}")
  shared = {k: v for k, v in values.items() if k in SHARED_NAMES + DERIVED_NAMES}
  mine = {name: values.get(name, setting.default) for name, setting in own.items()}
  return Config(method_settings=mine, **shared)


class _Values:
  """Attribute access to raw flag values (what methods read from a Config)."""

  def __init__(self, raw):
    self.__dict__.update(raw)


def _check_positive(raw, *names):
  for name in names:
    if raw[name] is None or raw[name] <= 0:
      raise UserError(f"--{name}={raw[name]} must be a positive number.")


def _check_non_negative(raw, *names):
  for name in names:
    if raw[name] is None or raw[name] < 0:
      raise UserError(f"--{name}={raw[name]} must not be negative.")


def check_flagfiles(argv):
  """Refuses flagfile lines that are not flags (absl skips them silently: a typo would change
  the run without a word); follows nested --flagfile lines."""
  paths = []
  for i, arg in enumerate(argv):
    if arg.startswith(("--flagfile=", "-flagfile=")):
      paths.append(arg.split("=", 1)[1])
    elif arg in ("--flagfile", "-flagfile") and i + 1 < len(argv):
      paths.append(argv[i + 1])
  for path in paths:
    try:
      with open(path) as f:
        lines = f.read().splitlines()
    except OSError as e:
      raise UserError(f"--flagfile={path}: {e.strerror}.") from None
    for number, line in enumerate(lines, 1):
      text = line.strip()
      if text and not text.startswith(("#", "//", "-")):
        raise UserError(f"--flagfile={path}, line {number}: {text!r} is not a flag; write "
                        "flags one per line as --name=value (# starts a comment).")
    check_flagfiles([l.strip() for l in lines])


def dataset_spec(config):
  """The DatasetSpec a Config was resolved against."""
  return data.get_spec(config.dataset, config.image_size, config.channels, config.svhn_split)
