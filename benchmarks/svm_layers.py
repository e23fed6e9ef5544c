"""Which part of the SVM protocol's features carries the digit class: each hidden layer, the code, all.

    python benchmarks/svm_layers.py --model_dirs=/work/study_ali10k_s123/ali_s123_n10000

The ALI protocol (age_tf.metrics.svm) concatenates the encoder's last three
hidden layers and its code. On digits the first of those layers is most of
the features (1,024 of the ALI encoder's 1,288 numbers), so the protocol's
error can sit at raw pixels' level while the layers a method shapes most,
the deeper ones and the code, carry the class better or worse. This runs
the same protocol as benchmarks/quality.py (10 labels per class, C chosen on
the last 300 training images, the test split) on each part alone and on all
of them, for each run's latest checkpoint and for its untrained networks
(Keras seeded with the run's seed), both served with the BatchNorm
statistics an export serves, then on raw pixels.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import app
from absl import flags

from age_tf import checkpointing
from age_tf import data
from age_tf import inference_statistics
from age_tf.errors import UserError
from age_tf.methods import METHODS
from age_tf.metrics import svm

flags.DEFINE_list("model_dirs", [], "Runs (python -m age_tf.train --dataset=digits ...) to read.")
flags.DEFINE_integer("repeats", 100, "SVM protocol draws.")
FLAGS = flags.FLAGS

VALIDATION, PER_CLASS = 300, 10  # benchmarks/quality.py's SVM_VALIDATION, SVM_PER_CLASS


def _parts(model):
  """(featurize, a name per part, the parts' column bounds) of the protocol's features.

  featurize is the protocol's own (svm.encoder_features): the last hidden
  layers flattened, in order, then the code.
  """
  layers = svm.hidden_layers(model.encoder, svm.HIDDEN_LAYERS)
  sizes = [int(np.prod(layer.output.shape[1:])) for layer in layers] + [model.latent_dim]
  names = [f"{layer.name} ({size})" for layer, size in zip(layers, sizes)]
  return (svm.encoder_features(model, svm.HIDDEN_LAYERS), names + [f"code ({model.latent_dim})"],
          np.cumsum([0] + sizes))


def _models(model_dir):
  """[(label, served model)]: the latest checkpoint, then the untrained networks."""
  try:
    config, trained, step = checkpointing.load_model(model_dir, None)
  except UserError as e:
    sys.exit(f"error: {e}")
  keras.utils.set_random_seed(config.seed)
  untrained = METHODS[config.method].create(config)
  name = os.path.basename(os.path.normpath(model_dir))
  return [(f"{name}, step {step}", inference_statistics.prepare(trained, config)[0]),
          (f"{name}, untrained", inference_statistics.prepare(untrained, config)[0])]


def main(argv):
  del argv
  if not FLAGS.model_dirs:
    raise app.UsageError("--model_dirs: name at least one digits run.")
  for model_dir in FLAGS.model_dirs:  # every run checked before any work
    config = checkpointing.saved_config(model_dir)
    if config is None or config.dataset != "digits":
      sys.exit(f"error: --model_dirs: {model_dir} is not a digits run (no "
               f"{checkpointing.FLAGS_FILE} with --dataset=digits); train one with "
               "python -m age_tf.train --dataset=digits.")
  arrays = svm.protocol_arrays(data.get_spec("digits"), VALIDATION)
  pool, pool_y, validation, validation_y, test, test_y = arrays

  def error(pool_x, validation_x, test_x):
    result = svm.linear_svm_error(pool_x, pool_y, validation_x, validation_y, test_x, test_y,
                                  per_class=PER_CLASS, repeats=FLAGS.repeats,
                                  c_values=svm.c_grid(svm.PAPER_GRID_SIZE), seed=0)
    return f"{100 * result['error']:.1f} ± {100 * result['error_std']:.1f}"

  print(f"digits, SVM protocol ({PER_CLASS} labels per class, {FLAGS.repeats} draws), "
        "test error %, on each part of the protocol's features alone and on all of them:\n")
  header = None
  for model_dir in FLAGS.model_dirs:
    for label, model in _models(model_dir):
      featurize, names, bounds = _parts(model)
      if header != names:
        header = names
        print(f"| run | {' | '.join(names)} | all (the protocol) |")
        print("|---" * (len(names) + 2) + "|")
      features = [np.asarray(featurize(x), np.float64) for x in (pool, validation, test)]
      cells = [error(*(f[:, lo:hi] for f in features))
               for lo, hi in zip(bounds[:-1], bounds[1:])]
      print(f"| {label} | {' | '.join(cells)} | {error(*features)} |", flush=True)
  pixels = [np.reshape(x, (len(x), -1)).astype(np.float64) for x in (pool, validation, test)]
  print(f"\nraw pixels (1,024): {error(*pixels)}")


if __name__ == "__main__":
  app.run(main)
