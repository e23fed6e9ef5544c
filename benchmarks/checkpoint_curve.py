"""Per checkpoint of a digits run: test reconstruction (own, shuffled, both BatchNorm modes) and a code SVM.

    python benchmarks/checkpoint_curve.py --model_dir=/tmp/study/gali4_s123 [--last=3]

For choosing a training budget from a run's curve (benchmarks/quality.py
then trains to it). For each checkpoint kept in MODEL_DIR/checkpoints, on
the 300 digits test images in [0, 1]: the pixel MSE of G(E(x)) against x
(own) and against the next test image (shuffled: a reconstruction that
carries its own digit is far closer to x than to another digit), as a ratio
to predicting the mean training image, in inference mode (the moving
BatchNorm statistics the checkpoint holds) and in training mode (each batch
of 100 normalised by its own statistics); and the test error of a linear
SVM (C = 1) on the codes E(x) from 10 labelled training images per class,
the mean over 5 draws of those images (a quick proxy for the SVM protocol of
`python -m age_tf.evaluate`, which uses the encoder's hidden layers too).
Not run in CI.
"""

import glob
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags
from sklearn.svm import LinearSVC

from age_tf import checkpointing
from age_tf import data

# --model_dir (a digits run's directory) is age_tf's own flag, defined by age_tf.config.
flags.DEFINE_integer("last", 0, "Only the newest N checkpoints (0: all kept).")
FLAGS = flags.FLAGS

BATCH, PER_CLASS, DRAWS = 100, 10, 5


def _arrays(spec, split):
  pairs = list(data.labelled_dataset(spec, split, 1000))
  return (np.concatenate([x.numpy() for x, _ in pairs]),
          np.concatenate([y.numpy() for _, y in pairs]))


def _batched(fn, x):
  return np.concatenate([fn(tf.constant(x[i:i + BATCH])).numpy() for i in range(0, len(x), BATCH)])


def main(argv):
  del argv
  spec = data.get_spec("digits")
  train_x, train_y = _arrays(spec, "train")
  test_x, test_y = _arrays(spec, "test")
  mean_mse = float(np.mean(np.square((test_x - train_x.mean(0)) / 2.0)))
  print(f"{FLAGS.model_dir}: mean-image pixel MSE {mean_mse:.4f}")
  print("| step | own (inference) | / mean image | shuffled (inference) | own (training mode) | "
        "shuffled (training mode) | code SVM error |")
  print("|---|---|---|---|---|---|---|")
  paths = sorted(glob.glob(os.path.join(checkpointing.checkpoint_dir(FLAGS.model_dir),
                                        "ckpt-*.index")),
                 key=lambda p: int(re.search(r"ckpt-(\d+)\.index$", p).group(1)))
  for index in paths[-FLAGS.last:] if FLAGS.last else paths:
    _, model, step = checkpointing.load_model(FLAGS.model_dir, index[:-len(".index")])
    row = [str(step)]
    for training in (False, True):
      recon = _batched(lambda x, t=training: model.reconstruct(x, training=t), test_x)
      own = float(np.mean(np.square((recon - test_x) / 2.0)))
      shuffled = float(np.mean(np.square((recon - np.roll(test_x, 1, axis=0)) / 2.0)))
      row += [f"{own:.4f}"] + ([f"{own / mean_mse:.2f}"] if not training else []) + [
          f"{shuffled:.4f}"]
    codes_train, codes_test = _batched(model.encode, train_x), _batched(model.encode, test_x)
    rng, errors = np.random.default_rng(0), []
    for _ in range(DRAWS):
      labelled = np.concatenate([rng.choice(np.flatnonzero(train_y == c), PER_CLASS,
                                            replace=False) for c in range(10)])
      svm = LinearSVC(C=1.0, max_iter=5000).fit(codes_train[labelled], train_y[labelled])
      errors.append(np.mean(svm.predict(codes_test) != test_y))
    row.append(f"{100 * np.mean(errors):.1f}%")
    print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
  flags.mark_flag_as_required("model_dir")
  app.run(main)
