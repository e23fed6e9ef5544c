"""Command-line flags and the resolved, validated run configuration they produce."""

import dataclasses
import json
import math
import os
import tempfile

from absl import flags

from age_tf import data
from age_tf import distribute
from age_tf import divergences
from age_tf import inference_statistics
from age_tf.errors import UserError
from age_tf.methods import METHODS
from age_tf.methods import gali
from age_tf.methods.base import PRECISIONS
from age_tf.methods.base import PRIORS
from age_tf.networks.subpixel import ALGORITHMS as TRANSPOSED_CONV_ALGORITHMS


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
flags.DEFINE_enum("svhn_split", None, list(data.SVHN_SPLITS),
                  "SVHN training images: train (73,257), extra (531,131) or train+extra "
                  "(default: the authors' per method: extra for the ALI family, train for AGE).")
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
flags.DEFINE_enum("prior", None, list(PRIORS), "Latent prior: uniform on the unit "
                  "sphere or N(0, I) (default: sphere for AGE as in its paper, gaussian for "
                  "the ALI/GALI family).")
flags.DEFINE_integer("width", None, "Base width of the networks: AGE's DCGAN ngf = ndf "
                     "(default 64, digits 16); ALI/GALI's narrowest layer, every other "
                     "scaling with it (default 32 at 32x32, 64 at 64x64, digits 8).")

flags.DEFINE_enum("kl_estimator", "moments", list(divergences.KL_ESTIMATORS),
                  "KL(Q || N(0, I)) estimator: moments (paper eq. 8, parametric) or knn "
                  "(Kozachenko-Leonenko, paper 3.1).")
flags.DEFINE_enum("kl_reduction", "mean", list(divergences.REDUCTIONS),
                  "Average the KL over latent dimensions (authors' code) or sum (eq. 8).")
flags.DEFINE_enum("x_recon_loss", None, ["l1", "l2"], "Data-space reconstruction loss: "
                  "l1 (AGE authors' code) or l2, mean squared error (AGE paper eq. 3; ALICE).")
flags.DEFINE_enum("z_recon_loss", "cos", list(divergences.RECONSTRUCTION_LOSSES),
                  "Latent reconstruction loss: cos (authors' code) or l2, mean squared "
                  "error (paper eq. 4), or l1.")
flags.DEFINE_float("x_recon_weight", None, "AGE's mu: weight of the data reconstruction "
                   "loss in the encoder objective (default 10; 0 with --z_recon_weight=0: "
                   "Fig. 2c ablation). ALICE's weight of its reconstruction term (default 1, "
                   "64x64 images 0.02).")
flags.DEFINE_float("z_recon_weight", None, "lambda: weight of the latent reconstruction "
                   "loss in the generator objective (default: the paper's 1000; digits 100).")
flags.DEFINE_float("generator_x_recon_weight", 0.0, "Weight of the data reconstruction "
                   "loss in the generator objective (paper Fig. 9 ablation; 0 = off).")
flags.DEFINE_integer("generator_steps", None, "Generator updates per encoder update "
                     "(default: 2, CelebA 3).")


# The ALI/GALI family.
flags.DEFINE_enum("gali_objective", "product", list(gali.OBJECTIVES), "ALI/GALI "
                  "generator-encoder objective: product of terms (GALI paper, authors' code), "
                  "or the paper's ablations minimax and misclassification (Fig. 5e-f).")
flags.DEFINE_integer("d_steps", None, "ALI/GALI discriminator updates per generator-encoder "
                     "update, each on its own batch (default: the authors' per method and "
                     "dataset, 5 or 1).")
flags.DEFINE_bool("simultaneous_updates", None, "ALI/GALI: take the discriminator's and the "
                  "generator-encoder's gradients from one forward pass and apply both "
                  "(authors' 1:1 mode; needs --d_steps=1; default per method and dataset).")
flags.DEFINE_float("instance_noise", 0.1, "ALI/GALI: std of the Gaussian noise added to "
                   "every image the discriminator sees, at the start of training.")
flags.DEFINE_enum("noise_schedule", "linear", list(gali.NOISE_SCHEDULES), "How the "
                  "instance noise decays per epoch: linear to 0 at the end (authors' code) or "
                  "exponential to 1% of its start (GALI paper text).")
flags.DEFINE_string("feature_model", "", "GALI-PT's frozen feature model M: a classifier "
                    "saved by `python -m age_tf.classifier` (its model_dir or .keras file), "
                    "or 'inception' (InceptionV3 pool features; needs --inception_weights).")
flags.DEFINE_string("inception_weights", "", "Local file of Keras InceptionV3 no-top weights "
                    "(inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5).")
flags.DEFINE_enum("mask_sampler", "uniform", list(gali.MASK_SAMPLERS), "GALI-mix encoder "
                  "masks: uniform rectangles (height and width uniform in 0..--mask_max_size, "
                  "placed to fit), authors (their sampler, horizontal range from the height), "
                  "or central squares of --mask_max_size.")
flags.DEFINE_integer("mask_max_size", None, "GALI-mix: largest mask side (default: the "
                     "image size, as the paper).")
flags.DEFINE_float("mask_fill", -2.0, "GALI-mix: the value masked pixels of every encoder "
                   "input take (authors' code: -2, outside the image range [-1, 1], so the "
                   "encoder can tell a hole from black pixels; -1 is black).")

flags.DEFINE_integer("batch_size", None, "Global batch size, split across replicas "
                     "(default: 64 for AGE, 100 for ALI/GALI; CelebA GALI-PT 20).")
flags.DEFINE_float("learning_rate", None, "Adam learning rate for every network (default: "
                   "the paper's per method and dataset; AGE 2e-4, digits 1e-3).")
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
                  "only). Whether it pays depends on the machine: on a 2-core AVX2 CPU (AMD "
                  "Zen 3) the CIFAR-10 AGE step ran 1.41x faster, on a 2-core AVX512/AMX CPU "
                  "(Intel Xeon) 1.2-1.3x slower, in bfloat16 2x slower; see the README's Speed "
                  "section.")
flags.DEFINE_enum("mixed_precision", "float32", list(PRECISIONS), "Compute precision of the "
                  "networks: float32, or bfloat16/float16 compute with float32 variables, "
                  "losses and outputs (Keras mixed_* policies; float16 adds dynamic loss "
                  "scaling). Pays off on GPUs, TPUs and CPUs with native bfloat16 (AVX512_BF16, "
                  "AMX).")
flags.DEFINE_enum("transposed_conv", "auto", list(TRANSPOSED_CONV_ALGORITHMS), "How "
                  "transposed convolutions (the generators' layers, every convolution's input "
                  "gradient) are computed: subpixel (one stride-1 convolution to s*s times the "
                  "channels, then depth_to_space; the same numbers; 1.2-1.9x faster steps on an "
                  "AVX2 CPU, level in float32 on an AVX512 one), native "
                  "(TensorFlow's Conv2DBackpropInput), auto (subpixel unless a GPU is "
                  "visible; see the README's Speed section).")
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
  kl_estimator: str
  kl_reduction: str
  x_recon_loss: str
  z_recon_loss: str
  x_recon_weight: float
  z_recon_weight: float
  generator_x_recon_weight: float
  generator_steps: int
  gali_objective: str
  d_steps: int
  simultaneous_updates: bool
  instance_noise: float
  noise_schedule: str
  feature_model: str
  inception_weights: str
  mask_sampler: str
  mask_max_size: int
  mask_fill: float
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
  if raw["strategy"] not in distribute.STRATEGIES:
    raise UserError(f"Unknown --strategy={raw['strategy']!r}; valid strategies: "
                    f"{', '.join(distribute.STRATEGIES)}.")
  svhn_split = raw["svhn_split"] or "train"
  spec = data.get_spec(raw["dataset"], raw["image_size"], raw["channels"], svhn_split)
  defaults = METHODS[raw["method"]].paper_defaults(spec)
  for key, value in defaults.items():
    if raw.get(key) is None:
      raw[key] = value
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
  _check_method_flags(raw)
  _check_positive(raw, "batch_size", "latent_dim", "width", "steps_per_loop", "log_every",
                  "image_every", "checkpoint_every", "keep_checkpoints", "num_cpu_replicas",
                  "shuffle_buffer")
  _check_non_negative(raw, "x_recon_weight", "lr_decay_epochs", "learning_rate")
  if raw["image_size"] not in (32, 64):
    raise UserError(f"--image_size={raw['image_size']} is not supported; the networks "
                    "take 32 or 64.")
  if not 0.0 < raw["lr_decay_factor"] <= 1.0:
    raise UserError(f"--lr_decay_factor={raw['lr_decay_factor']} must be in (0, 1].")
  if raw["batch_size"] > spec.num_train:
    raise UserError(f"--batch_size={raw['batch_size']} is larger than the {spec.num_train} "
                    f"training images of {spec.name}; use a smaller batch.")

  # An epoch is one pass over the training images; a step may use several batches.
  batches = METHODS[raw["method"]].epoch_batches_per_step(_Values(raw))
  steps_per_epoch = max(spec.num_train // (raw["batch_size"] * batches), 1)
  if raw["train_steps"] is None:
    if raw["epochs"] is None or raw["epochs"] <= 0:
      raise UserError("Give a positive --epochs or --train_steps.")
    raw["train_steps"] = max(1, int(round(raw["epochs"] * steps_per_epoch)))
  elif raw["train_steps"] <= 0:
    raise UserError(f"--train_steps={raw['train_steps']} must be positive.")
  return Config(num_train=spec.num_train, steps_per_epoch=steps_per_epoch, **raw)


class _Values:
  """Attribute access to raw flag values (what methods read from a Config)."""

  def __init__(self, raw):
    self.__dict__.update(raw)


# Flags that only one family of methods reads, and the value that means "unused".
_AGE_FLAGS = ("generator_steps", "z_recon_weight", "kl_estimator", "kl_reduction",
              "z_recon_loss", "generator_x_recon_weight")
_GALI_FLAGS = ("gali_objective", "d_steps", "simultaneous_updates", "instance_noise",
               "noise_schedule")
_GALI_PT_FLAGS = ("feature_model", "inception_weights")
_GALI_MIX_FLAGS = ("mask_sampler", "mask_max_size", "mask_fill")


def _check_method_flags(raw):
  """Validates the flags the method reads; refuses those it would silently ignore."""
  method = raw["method"]
  used = set(_AGE_FLAGS) if method == "age" else set(_GALI_FLAGS)
  used |= set(_GALI_PT_FLAGS) if method == "gali_pt" else set()
  used |= set(_GALI_MIX_FLAGS) if method == "gali_mix" else set()
  for name in _AGE_FLAGS + _GALI_FLAGS + _GALI_PT_FLAGS + _GALI_MIX_FLAGS:
    if name in used:
      continue
    if raw[name] is not None and raw[name] != flags.FLAGS[name].default:
      users = ("age" if name in _AGE_FLAGS else "gali_pt" if name in _GALI_PT_FLAGS else
               "gali_mix" if name in _GALI_MIX_FLAGS else
               ", ".join(m for m in METHODS if m != "age"))
      raise UserError(f"--{name} applies to --method={users}, not to --method={method}; "
                      "remove it.")
    raw[name] = None
  if raw["x_recon_weight"] is None:
    raw["x_recon_weight"] = 0.0
  elif raw["x_recon_weight"] and method not in ("age", "alice"):
    raise UserError(f"--x_recon_weight applies to --method=age or alice, not to "
                    f"--method={method}; remove it.")
  raw["x_recon_loss"] = raw["x_recon_loss"] or "l2"

  if method == "age":
    _check_positive(raw, "generator_steps")
    _check_non_negative(raw, "z_recon_weight", "generator_x_recon_weight")
    if raw["kl_estimator"] == "knn" and raw["batch_size"] < 2:
      raise UserError("--kl_estimator=knn needs --batch_size of at least 2.")
    return
  _check_positive(raw, "d_steps")
  _check_non_negative(raw, "instance_noise")
  if raw["simultaneous_updates"] and raw["d_steps"] != 1:
    raise UserError(f"--simultaneous_updates takes both gradients from one forward pass, so "
                    f"it needs --d_steps=1 (got {raw['d_steps']}); use --d_steps=1 or "
                    "--nosimultaneous_updates.")
  if method == "gali_pt":
    if not raw["feature_model"]:
      raise UserError("--method=gali_pt needs --feature_model: a classifier trained with "
                      "`python -m age_tf.classifier --dataset=... --model_dir=DIR` (pass DIR), "
                      "or 'inception' with --inception_weights=FILE.")
    if raw["feature_model"] != "inception" and not os.path.exists(raw["feature_model"]):
      raise UserError(f"--feature_model={raw['feature_model']} does not exist; train one with "
                      "`python -m age_tf.classifier --dataset=... --model_dir=DIR`.")
  if method == "gali_mix":
    if raw["mask_max_size"] is None:
      raw["mask_max_size"] = raw["image_size"]
    if not 0 < raw["mask_max_size"] <= raw["image_size"]:
      raise UserError(f"--mask_max_size={raw['mask_max_size']} must be in 1.."
                      f"{raw['image_size']} (the image size).")


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
