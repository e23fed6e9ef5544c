"""Entry point: python -m age_tf.classifier --dataset=svhn --model_dir=DIR trains the feature classifier of GALI-PT and the metrics."""

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from age_tf import data
from age_tf import features
from age_tf.errors import UserError

# Epochs per dataset when --epochs is not given. digits (measured): 10 epochs
# of 24 steps reach 97.7% test accuracy, the whole command taking about 30 s
# on a 2-core CPU. The others are not measured here (no network): a few
# passes over the large datasets, more for the harder cifar10 and folders.
DEFAULT_EPOCHS = {"digits": 10, "mnist": 10, "svhn": 15, "cifar10": 30, "folder": 30}

flags.DEFINE_string("dataset", "digits",
                    f"Labelled dataset: {', '.join(data.LABELLED_NAMES)}. digits "
                    "(scikit-learn's, bundled) needs no network; celeba has no labels.")
flags.DEFINE_string("model_dir", None, "Directory for classifier.keras and classifier.json "
                    "(default: <tmp>/age_tf/classifier_<dataset>). Pass it, or its "
                    "classifier.keras, as the feature model of GALI-PT and the metrics.")
flags.DEFINE_string("data_dir", None, "tensorflow_datasets data directory "
                    "(default: tfds's own, ~/tensorflow_datasets).")
flags.DEFINE_bool("download", True, "Download and prepare a tfds dataset that is not in "
                  "--data_dir (fails within seconds when offline).")
flags.DEFINE_integer("image_size", None, "Image size (default: the dataset's, as "
                     "age_tf.train sees it; folder: 32). Must match the generative model's.")
flags.DEFINE_integer("channels", None, "Channels of folder: images (1 or 3, default 3).")
flags.DEFINE_integer("epochs", None, "Training epochs (default per dataset: "
                     + ", ".join(f"{k} {v}" for k, v in DEFAULT_EPOCHS.items()) + ").")
flags.DEFINE_integer("batch_size", 64, "Batch size.")
flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
flags.DEFINE_integer("feature_dim", 512, "Size D of the feature layer (the features M(x)).")
flags.DEFINE_integer("seed", 0, "Random seed (weights, data order).")

FLAGS = flags.FLAGS


def _positive(name, value):
  if value is not None and value <= 0:
    raise UserError(f"--{name}={value} must be positive.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  try:
    for name in ("epochs", "batch_size", "learning_rate", "feature_dim", "image_size"):
      _positive(name, FLAGS[name].value)
    spec = data.get_spec(FLAGS.dataset, FLAGS.image_size, FLAGS.channels)
    data.num_classes(spec)  # a dataset without labels fails before anything is written
    epochs = FLAGS.epochs or DEFAULT_EPOCHS["folder" if spec.source == "folder" else spec.name]
    safe = "".join(c if c.isalnum() else "_" for c in FLAGS.dataset)
    model_dir = FLAGS.model_dir or os.path.join(tempfile.gettempdir(), "age_tf",
                                                f"classifier_{safe}")
    logging.info("Training a %dx%dx%d classifier on %s for %d epochs.", spec.image_size,
                 spec.image_size, spec.channels, spec.name, epochs)
    metrics = features.train_classifier(
        spec, model_dir, epochs=epochs, batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate, feature_dim=FLAGS.feature_dim,
        data_dir=FLAGS.data_dir, download=FLAGS.download, seed=FLAGS.seed)
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  accuracy = metrics["test_accuracy"]
  logging.info("Test accuracy %s (%d classes); wrote %s and %s.",
               "n/a (no test images)" if accuracy is None else f"{accuracy:.4f}",
               metrics["num_classes"], os.path.join(model_dir, features.CLASSIFIER_FILE),
               os.path.join(model_dir, features.CLASSIFIER_INFO))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
