"""The BatchNorm statistics pass: segment by segment against one probe from the network's inputs per layer.

    python benchmarks/statistics_pass.py --method=gali4 --dataset=digits
    python benchmarks/statistics_pass.py --method=age --dataset=cifar10

age_tf.train's flags choose the networks (--method, --dataset, --width, ...)
and the number of calibration inputs (--bn_statistics_images, capped at the
train split as training caps it).

The pass (age_tf/inference_statistics.py) computes each BatchNorm layer's
inputs from the previous layer's, kept in memory (`segments`, the default);
with MAX_KEPT_BYTES = 0 it computes each from the network's inputs
(`prefix`: quadratic in depth). Its first run is eager, later ones run
tf.functions traced at the second; `prefix, traced from the first run` is
the pass as it was before both changes. For each way, in this process and
alternating: the first run of a new StatisticsPass (what evaluate, the
export and training's first image step pay), the second (training's second
image step) and the median of --runs further runs (its later image steps).
Untrained networks on uniform random
images of the dataset's shape (the time does not depend on the pixels), so
no dataset is read; the ways' statistics are checked to agree.
"""

import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # pylint: disable=g-import-not-at-top
import numpy as np
from absl import app
from absl import flags

from age_tf import config as config_lib
from age_tf import inference_statistics
from age_tf import prior as prior_lib
from age_tf.methods import METHODS

flags.DEFINE_integer("runs", 3, "Further runs of each pass per round (median reported).")
flags.DEFINE_integer("rounds", 3, "Alternating rounds (new passes each round).")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  config = config_lib.from_flags()
  images = min(config.bn_statistics_images, config_lib.dataset_spec(config).num_train)
  keras.utils.set_random_seed(0)
  model = METHODS[config.method].create(config)
  shape = model.encoder.inputs[0].shape[1:]
  rng = np.random.default_rng(0)
  calibration = inference_statistics.Calibration(
      images=rng.integers(0, 256, (images, *shape), dtype=np.uint8),
      prior=prior_lib.numpy_draws(rng, images, config.latent_dim, config.prior))
  settings = inference_statistics.settings_of(config)
  default_bytes = inference_statistics.MAX_KEPT_BYTES
  # (MAX_KEPT_BYTES, whether the first run is traced too)
  ways = {"segments": (default_bytes, False), "prefix": (0, False),
          "prefix, traced from the first run": (0, True)}
  times = {w: {"first": [], "second": [], "later": []} for w in ways}
  results = {}
  for _ in range(FLAGS.rounds):
    for way, (max_kept, trace_first) in ways.items():
      inference_statistics.MAX_KEPT_BYTES = max_kept
      with inference_statistics.preserved(model):
        began = time.perf_counter()
        statistics_pass = inference_statistics.StatisticsPass(model, settings)
        passes = [statistics_pass.encoder, statistics_pass.generator]
        passes += [statistics_pass.reconstruction] if settings.mode == "recompute" else []
        for network_pass in passes if trace_first else ():
          network_pass._runs = 1  # pylint: disable=protected-access
        statistics_pass.run(calibration)
        times[way]["first"].append(time.perf_counter() - began)
        for run in range(1 + FLAGS.runs):
          began = time.perf_counter()
          statistics_pass.run(calibration)
          times[way]["second" if run == 0 else "later"].append(time.perf_counter() - began)
        results[way] = inference_statistics.snapshot(model)
  inference_statistics.MAX_KEPT_BYTES = default_bytes
  worst = max(float(np.max(np.abs(a - b) / (np.abs(b) + 1e-3)))
              for way in ways for a, b in zip(results[way], results["segments"]))
  layers = [len(p.layers) for p in (statistics_pass.encoder, statistics_pass.generator)]
  print(f"{config.method} {config.dataset} width {config.width}, {images} images, "
        f"BatchNorm layers: encoder {layers[0]}, generator {layers[1]}; "
        f"{os.environ.get('TF_NUM_INTRAOP_THREADS', 'all')} intra-op threads; medians of "
        f"{FLAGS.rounds} rounds")
  print("| pass | first run (s) | second run (s) | later runs (s) |")
  print("|---|---|---|---|")
  median = {w: {k: statistics.median(v) for k, v in t.items()} for w, t in times.items()}
  for way in ways:
    print(f"| {way} | {median[way]['first']:.2f} | {median[way]['second']:.2f} | "
          f"{median[way]['later']:.2f} |")
  print(f"largest relative difference between the ways' statistics: {worst:.1e}")


if __name__ == "__main__":
  app.run(main)
