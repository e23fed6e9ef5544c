"""Datasets (tfds, scikit-learn digits, image folders) and their tf.data pipelines of images in [-1, 1]."""

import collections
import dataclasses
import os
import socket

import numpy as np
import tensorflow as tf
from absl import logging

from age_tf.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FOLDER_PREFIX = "folder:"
SVHN_SPLITS = ("train", "extra", "train+extra")
CACHE_MODES = ("auto", "memory", "none")
DIGITS_TEST_SIZE = 300
DIGITS_SPLIT_SEED = 0
FOLDER_TEST_FRACTION = 0.05
FOLDER_SPLIT_SEED = 0
# tfds fetches prepared data from GCS first; failing to reach it within this
# time means we are offline (a plain tfds.load retries for about 200 s).
NETWORK_PROBE = ("storage.googleapis.com", 443)
NETWORK_PROBE_TIMEOUT_S = 3.0


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the rest of age_tf needs to know about a dataset."""
  name: str
  image_size: int
  channels: int
  num_train: int
  num_test: int
  source: str  # "tfds", "digits" or "folder"
  tfds_name: str = ""
  train_split: str = "train"
  test_split: str = "test"
  path: str = ""
  train_files: tuple = ()
  test_files: tuple = ()


# The paper's datasets at the size the AGE networks see them.
_TFDS = {
    "mnist": DatasetSpec("mnist", 32, 1, 60000, 10000, "tfds", "mnist"),
    "cifar10": DatasetSpec("cifar10", 32, 3, 50000, 10000, "tfds", "cifar10"),
    "svhn": DatasetSpec("svhn", 32, 3, 73257, 26032, "tfds", "svhn_cropped"),
    "celeba": DatasetSpec("celeba", 64, 3, 162770, 19962, "tfds", "celeb_a"),
}
_SVHN_EXTRA = 531131
DIGITS = DatasetSpec("digits", 32, 1, 1797 - DIGITS_TEST_SIZE, DIGITS_TEST_SIZE, "digits")
DATASET_NAMES = tuple(_TFDS) + ("digits", "folder:PATH")


def get_spec(name, image_size=None, channels=None, svhn_split="train"):
  """Resolves a --dataset value to its DatasetSpec, or raises UserError."""
  if name.startswith(FOLDER_PREFIX):
    return _folder_spec(name[len(FOLDER_PREFIX):], image_size or 32, channels or 3)
  if name == "digits":
    spec = DIGITS
  elif name in _TFDS:
    spec = _TFDS[name]
    if name == "svhn":
      if svhn_split not in SVHN_SPLITS:
        raise UserError(f"--svhn_split={svhn_split!r} is not valid; use one of {SVHN_SPLITS}.")
      num_train = {"train": spec.num_train, "extra": _SVHN_EXTRA,
                   "train+extra": spec.num_train + _SVHN_EXTRA}[svhn_split]
      spec = dataclasses.replace(spec, train_split=svhn_split, num_train=num_train)
  else:
    raise UserError(f"Unknown --dataset={name!r}; valid datasets: {', '.join(DATASET_NAMES)}.")
  if channels not in (None, spec.channels):
    raise UserError(f"--channels={channels} does not apply to {name}, which has "
                    f"{spec.channels}; --channels is for folder: datasets.")
  if image_size:
    spec = dataclasses.replace(spec, image_size=image_size)
  return spec


# ---------------------------------------------------------------- sources
# Each source yields {"image": uint8 [size, size, channels], "label": int64}
# already at the model's size, so a cache holds compact uint8 images.


def _resize_uint8(image, size):
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=True)
  return tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)


def _celeba_crop(image):
  """The authors' ALI crop: resize to 64 wide x 78 high, keep rows 7..70."""
  image = tf.image.resize(image, [78, 64], method="bilinear", antialias=True)
  image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
  return image[7:71]


def source(spec, split, data_dir=None, download=True, shuffle_files=False):
  """A tf.data.Dataset of one split ("train" or "test") of the dataset."""
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")
  if spec.source == "digits":
    return _digits_source(split, spec.image_size)
  if spec.source == "folder":
    files = spec.train_files if split == "train" else spec.test_files
    return _folder_source(files, spec)
  tfds_split = spec.train_split if split == "train" else spec.test_split
  ds = load_tfds(spec.tfds_name, tfds_split, data_dir, download, shuffle_files)
  size = spec.image_size

  def convert(example):
    image = example["image"]
    if spec.name == "celeba":
      image = _celeba_crop(image)
      if size != 64:
        image = _resize_uint8(image, size)
    elif image.shape[0] != size or image.shape[1] != size:
      image = _resize_uint8(image, size)
    label = example["label"] if "label" in example else tf.constant(-1, tf.int64)
    return {"image": image, "label": tf.cast(label, tf.int64)}

  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)


def load_tfds(tfds_name, split, data_dir=None, download=True, shuffle_files=False,
              probe=NETWORK_PROBE):
  """tfds.load that fails within seconds, with instructions, when offline."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  kwargs = dict(split=split, data_dir=data_dir, shuffle_files=shuffle_files)
  try:
    return tfds.load(tfds_name, download=False, **kwargs)
  except AssertionError as not_prepared:  # tfds: "could not find data in DATA_DIR"
    where = data_dir or tfds.core.constants.DATA_DIR
    fix = (f"prepare it on a machine with network access:\n"
           f"    python -c \"import tensorflow_datasets as tfds; "
           f"tfds.builder('{tfds_name}', data_dir='DIR').download_and_prepare()\"\n"
           f"then copy DIR/{tfds_name} into {where} (or pass --data_dir=DIR).")
    if not download:
      raise UserError(f"Dataset '{tfds_name}' is not prepared in {where} and "
                      f"--nodownload was given. To use it, {fix}") from not_prepared
    reason = _network_unreachable(probe)
    if reason:
      raise UserError(f"Dataset '{tfds_name}' is not prepared in {where} and cannot "
                      f"be downloaded ({reason}). To use it, {fix}") from not_prepared
    tfds.builder(tfds_name, data_dir=data_dir).download_and_prepare()
    return tfds.load(tfds_name, download=False, **kwargs)


def _network_unreachable(probe):
  """None when a TCP connection to `probe` succeeds quickly, else why not."""
  try:
    with socket.create_connection(probe, timeout=NETWORK_PROBE_TIMEOUT_S):
      return None
  except OSError as e:
    return f"no network: could not connect to {probe[0]}:{probe[1]}: {e}"


def _digits_arrays():
  """scikit-learn's bundled 8x8 digits with the fixed, seeded, stratified split."""
  from sklearn import datasets, model_selection  # pylint: disable=g-import-not-at-top
  digits = datasets.load_digits()
  train_idx, test_idx = model_selection.train_test_split(
      np.arange(len(digits.target)), test_size=DIGITS_TEST_SIZE,
      random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
  images = (digits.images / 16.0 * 255.0).astype(np.float32)[..., None]
  return {"train": (images[train_idx], digits.target[train_idx]),
          "test": (images[test_idx], digits.target[test_idx])}


def _digits_source(split, size):
  images, labels = _digits_arrays()[split]
  # Bilinear upsampling of the 8x8 digits to the model's size, as uint8.
  images = _resize_uint8(tf.constant(images), size)
  return tf.data.Dataset.from_tensor_slices(
      {"image": images, "label": tf.constant(labels, tf.int64)})


def _list_images(root):
  found = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames.sort()
    found.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                 if f.lower().endswith(IMAGE_EXTENSIONS))
  return found


def _folder_spec(path, image_size, channels):
  """Splits: PATH/train with PATH/val|valid|test when present, else a seeded 5% hold-out."""
  if not os.path.isdir(path):
    raise UserError(f"--dataset=folder:{path}: no such directory.")
  if channels not in (1, 3):
    raise UserError(f"--channels={channels} is not valid; use 1 (grey) or 3 (RGB).")
  train_root = os.path.join(path, "train")
  test_roots = [os.path.join(path, d) for d in ("val", "valid", "test")]
  test_root = next((d for d in test_roots if os.path.isdir(d)), None)
  if os.path.isdir(train_root) and test_root and _list_images(test_root):
    train, test = _list_images(train_root), _list_images(test_root)
  else:
    files = _list_images(path)
    order = np.random.default_rng(FOLDER_SPLIT_SEED).permutation(len(files))
    num_test = max(1, int(round(len(files) * FOLDER_TEST_FRACTION))) if len(files) > 1 else 0
    test = [files[i] for i in sorted(order[:num_test])]
    train = [files[i] for i in sorted(order[num_test:])]
  if not train:
    raise UserError(f"--dataset=folder:{path} has no training images "
                    f"(looked for {', '.join(IMAGE_EXTENSIONS)} files, recursively).")
  return DatasetSpec(f"folder:{path}", image_size, channels, len(train), len(test),
                     "folder", path=path, train_files=tuple(train), test_files=tuple(test))


def check_folder_images(spec, on_bad_image="fail"):
  """Decodes every image of a folder: dataset once, before training reads any.

  A file that does not decode fails the run naming it (on_bad_image="fail")
  or is left out with a warning that counts such files ("skip"). Images whose
  size is not the training size are resized; a log line says so, with the
  sizes found. Returns the spec (without the undecodable files when skipping).
  """
  files = list(spec.train_files) + list(spec.test_files)

  def probe(index, path):
    image = tf.io.decode_image(tf.io.read_file(path), channels=spec.channels,
                               expand_animations=False)
    return index, tf.shape(image)[:2]

  ds = tf.data.Dataset.from_tensor_slices((tf.range(len(files), dtype=tf.int64), files))
  ds = ds.map(probe, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
  sizes = {int(i): (int(hw[0]), int(hw[1])) for i, hw in ds.as_numpy_iterator()}
  bad = [f for i, f in enumerate(files) if i not in sizes]
  if bad:
    shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
    if on_bad_image == "fail":
      raise UserError(f"--dataset={spec.name}: {len(bad)} file(s) cannot be read as images: "
                      f"{shown}. Remove or fix them, or pass --on_bad_image=skip to leave "
                      "them out.")
    logging.warning("--dataset=%s: left out %d of %d file(s) that cannot be read as images "
                    "(--on_bad_image=skip): %s", spec.name, len(bad), len(files), shown)
    unreadable = set(bad)
    train = tuple(f for f in spec.train_files if f not in unreadable)
    test = tuple(f for f in spec.test_files if f not in unreadable)
    if not train:
      raise UserError(f"--dataset={spec.name} has no readable training images.")
    spec = dataclasses.replace(spec, train_files=train, test_files=test,
                               num_train=len(train), num_test=len(test))
  counts = collections.Counter(sizes.values())
  if set(counts) != {(spec.image_size, spec.image_size)}:
    found = ", ".join(f"{n} of {h}x{w}" for (h, w), n in counts.most_common(5))
    logging.info("--dataset=%s: images of %d size(s) (%s%s) are resized to %dx%d.", spec.name,
                 len(counts), found, ", ..." if len(counts) > 5 else "", spec.image_size,
                 spec.image_size)
  return spec


def _folder_class_dirs(files, spec):
  """Each file's first directory below its split root ("" for a file directly in it)."""
  roots = [os.path.join(spec.path, d) for d in ("train", "val", "valid", "test")] + [spec.path]
  classes = []
  for f in files:
    root = next(r for r in roots if f.startswith(r + os.sep))
    parts = os.path.relpath(f, root).split(os.sep)
    classes.append(parts[0] if len(parts) > 1 else "")
  return classes


def _folder_labels(files, spec):
  """Class index of each file's first directory below its split root, or -1."""
  classes = _folder_class_dirs(files, spec)
  names = sorted(set(classes) - {""})
  index = {name: i for i, name in enumerate(names)}
  return [index.get(c, -1) for c in classes]


def _folder_source(files, spec, labels=None):
  """Decoded, resized images of `files`; labels default to _folder_labels's."""
  size, channels = spec.image_size, spec.channels

  def load(path, label):
    data = tf.io.read_file(path)
    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return {"image": _resize_uint8(image, size), "label": label}

  if labels is None:
    labels = _folder_labels(files, spec)
  ds = tf.data.Dataset.from_tensor_slices(
      (tf.constant(list(files), tf.string), tf.constant(list(labels), tf.int64)))
  return ds.map(load, num_parallel_calls=tf.data.AUTOTUNE)


# ---------------------------------------------------------------- pipelines


def to_float(images):
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return tf.cast(images, tf.float32) / 127.5 - 1.0


def to_uint8(images):
  """float [-1, 1] -> uint8 [0, 255]."""
  return tf.cast(tf.clip_by_value(tf.round((images + 1.0) * 127.5), 0, 255), tf.uint8)


def _fits_in_memory(spec, split):
  count = spec.num_train if split == "train" else spec.num_test
  size = count * spec.image_size ** 2 * spec.channels
  try:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    memory = 8 << 30
  return size <= memory // 4


def train_dataset(spec, per_replica_batch, batches_per_step, seed, data_dir=None,
                  download=True, cache="auto", shuffle_buffer=10000, input_context=None,
                  shuffle_files=True):
  """The training stream: elements of shape (batches_per_step, batch, H, W, C).

  Every update of a step gets its own real batch (the authors' encoder and
  generator updates see different batches). Images are float32 in [-1, 1].
  Under a multi-worker strategy each input pipeline reads its own shard.
  """
  ds = source(spec, "train", data_dir, download, shuffle_files=shuffle_files)
  if input_context is not None and input_context.num_input_pipelines > 1:
    ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
  ds = ds.map(lambda example: example["image"], num_parallel_calls=tf.data.AUTOTUNE)
  if cache == "memory" or (cache == "auto" and _fits_in_memory(spec, "train")):
    ds = ds.cache()
  ds = ds.shuffle(min(shuffle_buffer, spec.num_train), seed=seed, reshuffle_each_iteration=True)
  ds = ds.batch(per_replica_batch, drop_remainder=True).repeat()
  ds = ds.batch(batches_per_step, drop_remainder=True)
  ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  ds = ds.with_options(options)
  return ds.prefetch(tf.data.AUTOTUNE)


def test_images(spec, count, data_dir=None, download=True):
  """The first `count` test images in [-1, 1] (a fixed set for figures and tests)."""
  ds = source(spec, "test", data_dir, download).take(count).batch(max(count, 1))
  for batch in ds:
    return to_float(batch["image"])
  raise UserError(f"Dataset {spec.name} has no test images.")


def test_dataset(spec, batch_size, data_dir=None, download=True):
  """The whole test split as batches of (images in [-1, 1], labels), in order."""
  ds = source(spec, "test", data_dir, download).batch(batch_size)
  return ds.map(lambda b: (to_float(b["image"]), b["label"]),
                num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


# ---------------------------------------------------------------- labelled


# Datasets with class labels (for the feature classifier of GALI-PT and the
# evaluation metrics). celeba has attributes, not classes.
_NUM_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10, "svhn": 10}
LABELLED_NAMES = tuple(_NUM_CLASSES) + ("folder:PATH (class subdirectories)",)


def _check_labelled(spec):
  if spec.source != "folder" and spec.name not in _NUM_CLASSES:
    raise UserError(f"Dataset {spec.name} has no class labels, so it cannot train or "
                    f"label a classifier; use one of: {', '.join(LABELLED_NAMES)}.")


def _folder_class_names(spec):
  """The sorted class folder names of a folder: dataset, or UserError when it has none."""
  train = _folder_class_dirs(spec.train_files, spec)
  layout = (f"a labelled folder: dataset needs each image in a directory named after "
            f"its class: {spec.path}/train/CLASS/... with {spec.path}/val/CLASS/..., "
            f"or {spec.path}/CLASS/...")
  unlabelled = [f for f, c in zip(spec.train_files, train) if not c]
  if unlabelled:
    raise UserError(f"--dataset={spec.name} has {len(unlabelled)} training image(s) outside "
                    f"class folders (e.g. {unlabelled[0]}); {layout}.")
  names = sorted(set(train))
  if len(names) < 2:
    raise UserError(f"--dataset={spec.name} has {len(names)} class folder(s) "
                    f"({', '.join(names)}); a classifier needs at least 2. {layout}.")
  known = set(names)
  test = _folder_class_dirs(spec.test_files, spec)
  stray = [(f, c) for f, c in zip(spec.test_files, test) if c not in known]
  if stray:
    f, c = stray[0]
    where = f"folder {c!r}, which is not a training class" if c else "no class folder"
    raise UserError(f"--dataset={spec.name} has {len(stray)} test image(s) whose class is "
                    f"unknown (e.g. {f}, in {where}); {layout}, the test classes "
                    f"named like the training ones.")
  return names


def num_classes(spec):
  """The number of classes of a labelled dataset (10 for digits, mnist, cifar10, svhn)."""
  _check_labelled(spec)
  if spec.source == "folder":
    return len(_folder_class_names(spec))
  return _NUM_CLASSES[spec.name]


def labelled_dataset(spec, split, batch_size, *, data_dir=None, download=True, shuffle=False,
                     seed=0, repeat=False, drop_remainder=False, cache="auto"):
  """Batches of (images float32 [-1, 1] (B, size, size, channels), labels int64) of a split.

  The images are exactly the ones the generative models see (the same
  sources, resizing and scaling); labels are scikit-learn's for digits,
  tfds's 'label' for mnist, cifar10 and svhn, and the index of the sorted
  class folder names for folder: datasets. celeba has no class labels.
  """
  if split not in ("train", "test"):
    raise ValueError(f"split must be 'train' or 'test', not {split!r}")
  if cache not in CACHE_MODES:
    raise ValueError(f"cache must be one of {CACHE_MODES}, not {cache!r}")
  _check_labelled(spec)
  if spec.source == "folder":
    index = {name: i for i, name in enumerate(_folder_class_names(spec))}
    files = spec.train_files if split == "train" else spec.test_files
    ds = _folder_source(files, spec, [index[c] for c in _folder_class_dirs(files, spec)])
  else:
    ds = source(spec, split, data_dir, download, shuffle_files=shuffle)
  shape = (spec.image_size, spec.image_size, spec.channels)
  ds = ds.map(lambda example: (tf.ensure_shape(example["image"], shape),
                               tf.cast(example["label"], tf.int64)),
              num_parallel_calls=tf.data.AUTOTUNE)
  if cache == "memory" or (cache == "auto" and _fits_in_memory(spec, split)):
    ds = ds.cache()
  if shuffle:
    count = spec.num_train if split == "train" else spec.num_test
    ds = ds.shuffle(max(1, min(10000, count)), seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(lambda images, labels: (to_float(images), labels),
              num_parallel_calls=tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
