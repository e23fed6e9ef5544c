"""What M numbers per digits image carry on the SVM protocol: PCA, random projections, untrained codes.

    python benchmarks/code_baselines.py --methods=gali4,ali

docs/quality.md compares each method's codes alone (M = 8 numbers per image
on digits) with the SVM protocol of benchmarks/quality.py: 10 labels per
class, C chosen on the last 300 training images, 100 draws, the test split.
Raw pixels (1,024 numbers) are one floor; this prints the floors of the same
size as the codes: the top M principal components of the labelled pool,
random projections of the pixels to M dimensions, and the codes of each
method's untrained networks (seed 123, statistics served as an export
serves them).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags

from age_tf import config as config_lib
from age_tf import data
from age_tf import inference_statistics
from age_tf.methods import METHODS
from age_tf.metrics import svm

flags.DEFINE_list("methods", ["gali4", "ali"], "Methods whose untrained codes are measured.")
flags.DEFINE_list("dimensions", ["8", "10", "16"], "M of the PCA and random-projection rows.")
flags.DEFINE_integer("repeats", 100, "SVM protocol draws.")
FLAGS = flags.FLAGS

VALIDATION, PER_CLASS = 300, 10  # benchmarks/quality.py's SVM_VALIDATION, SVM_PER_CLASS


def main(argv):
  del argv
  arrays = svm.protocol_arrays(data.get_spec("digits"), VALIDATION)

  def row(name, featurize):
    result = svm.linear_svm_error(*arrays, per_class=PER_CLASS, repeats=FLAGS.repeats,
                                  c_values=svm.c_grid(svm.PAPER_GRID_SIZE), seed=0,
                                  featurize=featurize)
    print(f"| {name} | {100 * result['error']:.1f} ± {100 * result['error_std']:.1f} |",
          flush=True)

  print(f"digits, SVM protocol ({PER_CLASS} labels per class, {FLAGS.repeats} draws), "
        "test error %:\n\n| features | SVM error (%) |\n|---|---|")
  pool = arrays[0].reshape(len(arrays[0]), -1).astype(np.float64)
  mean = pool.mean(axis=0)
  _, _, directions = np.linalg.svd(pool - mean, full_matrices=False)
  rng = np.random.default_rng(0)
  for m in (int(d) for d in FLAGS.dimensions):
    row(f"PCA, top {m} components of the pool",
        lambda x, v=directions[:m]: (x.reshape(len(x), -1) - mean) @ v.T)
    projection = rng.standard_normal((pool.shape[1], m))
    row(f"pixels times a random {pool.shape[1]} x {m} matrix",
        lambda x, p=projection: x.reshape(len(x), -1) @ p)
  for method in FLAGS.methods:
    config = config_lib.resolve(dict(method=method, dataset="digits", model_dir="/tmp/unused",
                                     seed=123))
    served, _ = inference_statistics.prepare(METHODS[method].create(config), config)
    encode = tf.function(lambda x, served=served: served.encode(x, training=False))
    row(f"untrained {method} codes (M = {config.latent_dim}, seed 123)",
        lambda x, encode=encode: np.concatenate(
            [encode(tf.constant(x[i:i + 100])).numpy() for i in range(0, len(x), 100)]))


if __name__ == "__main__":
  app.run(main)
