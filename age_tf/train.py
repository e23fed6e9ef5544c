"""Entry point: python -m age_tf.train --method=age --dataset=digits --model_dir=DIR."""

import contextlib
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from age_tf import config as config_lib
from age_tf import distribute
from age_tf import export
from age_tf import loop
from age_tf import run_lock
from age_tf.errors import TrainingStopped
from age_tf.errors import UserError

flags.DEFINE_bool("print_settings", False, "Print every setting the run would use (the "
                  "method's per-dataset defaults filled in: what the run's flags.json records) "
                  "as JSON and exit, training nothing and writing nothing.")
FLAGS = flags.FLAGS


def main(argv):
  logging.set_verbosity(logging.INFO)
  try:
    # First: absl passes a flagfile line that is not a flag on as an argument.
    config_lib.check_flagfiles(sys.argv)
    if len(argv) > 1:
      raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config = config_lib.from_flags()
    if FLAGS.print_settings:
      print(config.to_json())
      return
    # Before TensorFlow starts any work (logical CPU devices, cluster set-up).
    strategy = distribute.make_strategy(config.strategy, config.num_cpu_replicas)
    chief = distribute.is_chief(strategy)
    # The run holds its model_dir through training and the export that ends it.
    with run_lock.RunLock(config.model_dir) if chief else contextlib.nullcontext():
      loop.train(config, strategy, lock=False)
      if config.export and chief:
        export.export_after_training(config)
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  except TrainingStopped as e:
    sys.stderr.write(f"{e}\n")
    sys.exit(e.exit_code)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
