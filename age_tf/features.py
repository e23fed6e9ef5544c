"""Frozen feature models M(x) for GALI-PT and evaluation: a small trained classifier's features, or InceptionV3 pool3."""

import contextlib
import fcntl
import json
import os
import tempfile

import keras
import tensorflow as tf
from absl import logging

import age_tf
from age_tf import data
from age_tf import files
from age_tf.errors import UserError

CLASSIFIER_FILE = "classifier.keras"
CLASSIFIER_INFO = "classifier.json"
FEATURES_LAYER = "features"
LOGITS_LAYER = "logits"
INCEPTION = "inception"
INCEPTION_SIZE = 299
INCEPTION_DIM = 2048
INCEPTION_WEIGHTS_FILE = "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Where keras.applications.InceptionV3(weights="imagenet", include_top=False) fetches it.
INCEPTION_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                         "inception_v3/" + INCEPTION_WEIGHTS_FILE)


# ---------------------------------------------------------------- classifier


def build_classifier(image_size, channels, num_classes, feature_dim=512, dropout=0.3):
  """A small CNN: images in [-1, 1] -> logits; its layer "features" is the feature vector.

  Built from Keras's own layers only, so a saved classifier loads without
  custom objects. The dropout sits after "features", so the feature model
  (everything up to "features") is deterministic; its BatchNorm layers run
  on their moving averages once frozen.
  """
  inputs = keras.Input((image_size, image_size, channels), name="images")
  x = inputs
  for i, (filters, stride) in enumerate([(32, 1), (32, 2), (64, 1), (64, 2), (128, 2)]):
    x = keras.layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False,
                            name=f"conv{i + 1}")(x)
    x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i + 1}")(x)
    x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
  x = keras.layers.Flatten(name="flatten")(x)
  x = keras.layers.Dense(feature_dim, activation="relu", name=FEATURES_LAYER)(x)
  x = keras.layers.Dropout(dropout, name="dropout")(x)
  logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER)(x)
  return keras.Model(inputs, logits, name="classifier")


def _save_model_atomically(model, path):
  """model.save to `path` via a temporary file in its directory and a rename."""
  with tempfile.TemporaryDirectory() as tmp:
    local = os.path.join(tmp, CLASSIFIER_FILE)
    model.save(local)
    with open(local, "rb") as f:
      files.atomic_write(path, f.read())


def train_classifier(spec, model_dir, *, epochs, batch_size, learning_rate, feature_dim,
                     data_dir=None, download=True, seed=0, verbose=2):
  """Trains build_classifier on the labelled train split; evaluates on test; saves.

  Writes model_dir/classifier.keras (the Keras model, atomically) and
  model_dir/classifier.json (what it was trained on and how well it does);
  returns that JSON's dict. Raises UserError for a dataset without labels.
  """
  classes = data.num_classes(spec)  # no labels: fail before any work
  keras.utils.set_random_seed(seed)
  train = data.labelled_dataset(spec, "train", batch_size, data_dir=data_dir,
                                download=download, shuffle=True, seed=seed)
  test = data.labelled_dataset(spec, "test", batch_size, data_dir=data_dir, download=download)
  model = build_classifier(spec.image_size, spec.channels, classes, feature_dim)
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  history = model.fit(train, epochs=epochs, verbose=verbose, shuffle=False)
  metrics = {
      "dataset": spec.name,
      "image_size": spec.image_size,
      "channels": spec.channels,
      "num_classes": classes,
      "feature_dim": feature_dim,
      "epochs": epochs,
      "batch_size": batch_size,
      "learning_rate": learning_rate,
      "seed": seed,
      "train_accuracy": float(history.history["accuracy"][-1]) if epochs else None,
      "test_accuracy": None,
      "test_loss": None,
  }
  if spec.num_test:
    loss, accuracy = model.evaluate(test, verbose=0)
    metrics.update(test_accuracy=float(accuracy), test_loss=float(loss))
  tf.io.gfile.makedirs(model_dir)
  _save_model_atomically(model, os.path.join(model_dir, CLASSIFIER_FILE))
  files.atomic_write(os.path.join(model_dir, CLASSIFIER_INFO),
                     json.dumps(metrics, indent=2, sort_keys=True) + "\n")
  return metrics


def classifier_complete(path):
  """Whether train_classifier finished writing into path (its model and, last, its JSON)."""
  return all(tf.io.gfile.exists(os.path.join(path, f)) for f in (CLASSIFIER_FILE, CLASSIFIER_INFO))


def default_cache_dir():
  """Where shared classifiers are kept: $AGE_TF_CACHE_DIR, else $XDG_CACHE_HOME/age_tf, else
  ~/.cache/age_tf (read when called, so a process may set it first)."""
  explicit = os.environ.get("AGE_TF_CACHE_DIR")
  if explicit:
    return explicit
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "age_tf")


@contextlib.contextmanager
def _exclusive(lock_path):
  """Holds an exclusive lock on lock_path (a local file) until the block ends."""
  with open(lock_path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def cached_classifier(spec, cache_dir, *, epochs, data_dir=None, download=True, **settings):
  """The classifier of `spec` trained with these settings, from cache_dir or trained into it.

  Returns (its directory, whether this call trained it). One directory per
  dataset, settings and age_tf version; the first process to need it trains
  it while holding a lock on it, so processes evaluating at the same time
  train it once and the others wait for it. Evaluating many runs with the
  same cached classifier also makes their feature metrics comparable.
  Raises OSError when cache_dir cannot be created or written.
  """
  name = "_".join([f"{spec.name}-{spec.image_size}x{spec.image_size}x{spec.channels}",
                   f"classifier-v{age_tf.__version__}", f"e{epochs}"] +
                  [f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}"
                   for k, v in sorted(settings.items())])
  path = os.path.join(cache_dir, name)
  os.makedirs(cache_dir, exist_ok=True)
  with _exclusive(path + ".lock"):
    if classifier_complete(path):
      return path, False
    logging.info("Training the %s classifier (%d epochs) into the cache, %s.", spec.name,
                 epochs, path)
    train_classifier(spec, path, epochs=epochs, data_dir=data_dir, download=download,
                     verbose=0, **settings)
  return path, True


# ---------------------------------------------------------------- feature models


def feature_dim(model):
  """D, the size of the feature vectors a load_feature_model model returns."""
  return int(model.output_shape[-1])


def load_feature_model(name_or_path, image_size, channels, *, inception_weights=None):
  """A frozen keras.Model: images (B, size, size, channels) in [-1, 1] -> features (B, D).

  `name_or_path` is "inception" (InceptionV3's 2048-d average-pooled pool3,
  from the local weights file `inception_weights`), or a classifier written
  by train_classifier: its classifier.keras or the directory holding it (the
  output of its "features" layer). The model is differentiable with respect
  to its input and has no trainable variables.
  """
  if name_or_path == INCEPTION:
    backbone, prepare = _inception(inception_weights, image_size, channels)
    name = "inception_features"
  else:
    backbone, prepare = _classifier_features(str(name_or_path), image_size, channels), None
    name = "classifier_features"
  inputs = keras.Input((image_size, image_size, channels), name="images")
  x = prepare(inputs) if prepare else inputs
  model = keras.Model(inputs, backbone(x), name=name)
  model.trainable = False
  return model


def _classifier_path(path):
  if tf.io.gfile.isdir(path):
    inside = os.path.join(path, CLASSIFIER_FILE)
    if not tf.io.gfile.exists(inside):
      raise UserError(f"Feature model directory {path} holds no {CLASSIFIER_FILE}; train one "
                      f"with python -m age_tf.classifier --model_dir={path}, or pass "
                      f"'{INCEPTION}'.")
    return inside
  if not tf.io.gfile.exists(path):
    raise UserError(f"Feature model {path!r} is neither '{INCEPTION}' nor an existing file or "
                    f"directory; pass '{INCEPTION}', or the {CLASSIFIER_FILE} (or its "
                    f"directory) written by python -m age_tf.classifier.")
  return path


def _classifier_features(path, image_size, channels):
  path = _classifier_path(path)
  try:
    classifier = keras.models.load_model(path, compile=False)
  except Exception as e:  # Keras raises ValueError, OSError, zipfile errors...
    raise UserError(f"Feature model {path} is not a Keras model that loads "
                    f"({type(e).__name__}: {e}); pass a {CLASSIFIER_FILE} written by "
                    f"python -m age_tf.classifier.") from e
  try:
    features = classifier.get_layer(FEATURES_LAYER).output
  except ValueError as e:
    raise UserError(f"Feature model {path} has no layer named '{FEATURES_LAYER}'; pass a "
                    f"{CLASSIFIER_FILE} written by python -m age_tf.classifier.") from e
  have = tuple(classifier.input_shape[1:])
  want = (image_size, image_size, channels)
  if have != want:
    shape = lambda s: "x".join(str(d) for d in s)
    raise UserError(f"Feature model {path} takes {shape(have)} images but this dataset's "
                    f"images are {shape(want)}; train a classifier on this dataset at this "
                    f"size (python -m age_tf.classifier --dataset=... --model_dir=...) and "
                    f"pass that one.")
  return keras.Model(classifier.inputs, features, name="classifier_backbone")


def _inception(weights, image_size, channels):
  """InceptionV3 pool3 and the resize/tile to its 299x299x3 input; checks weights first."""
  if channels not in (1, 3):
    raise UserError(f"InceptionV3 features need 1- or 3-channel images, not {channels}.")
  if not weights or not os.path.isfile(weights) or not os.access(weights, os.R_OK):
    problem = ("no weights file was given" if not weights
               else f"{weights!r} is not a readable file")
    raise UserError(f"InceptionV3 features need its ImageNet weights as a local file, and "
                    f"{problem}: on a machine with network access download "
                    f"{INCEPTION_WEIGHTS_FILE} (Keras applications: {INCEPTION_WEIGHTS_URL}), "
                    f"copy it here and pass it with --inception_weights=PATH.")
  try:
    backbone = keras.applications.InceptionV3(
        include_top=False, weights=weights, pooling="avg",
        input_shape=(INCEPTION_SIZE, INCEPTION_SIZE, 3))
  except Exception as e:  # a file that is not InceptionV3's no-top weights
    raise UserError(f"--inception_weights={weights} could not be loaded into InceptionV3 "
                    f"without its top ({type(e).__name__}: {e}); pass "
                    f"{INCEPTION_WEIGHTS_FILE}.") from e
  resize = keras.layers.Resizing(INCEPTION_SIZE, INCEPTION_SIZE, interpolation="bilinear",
                                 antialias=image_size > INCEPTION_SIZE, name="to_299")
  tile = keras.layers.Concatenate(axis=-1, name="grey_to_rgb")

  def prepare(images):
    x = resize(images)
    # InceptionV3's preprocess_input maps [0, 255] to [-1, 1]: ours already are.
    return tile([x, x, x]) if channels == 1 else x

  return backbone, prepare
