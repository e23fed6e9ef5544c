"""Serving speed of an export: latency at batch 1 and throughput at batch 64, two loaders.

    python benchmarks/serving.py                          # CIFAR-10 AGE, untrained weights
    python benchmarks/serving.py --method=gali4 --dataset=svhn
    python benchmarks/serving.py --export=/tmp/serving/age_cifar10/3   # an existing version
    python benchmarks/serving.py --binary=/tmp/saved_model_check       # skip the build

Without --export, the model is built at the dataset's shape with the
library's defaults for --method and --dataset (age_tf.config.resolve) and
exported untrained (export.write_export, no checkpoint and no data needed):
the cost of a request does not depend on the weights. The same version is
then timed through

  C++     export/saved_model_check (built by export/build.sh unless --binary),
          tensorflow::LoadSavedModel with tag "serve" as TF Serving loads it,
          one Session::Run per request, timed inside the program (--repeat);
  Python  tf.saved_model.load, the signature called and its outputs fetched
          to numpy (time.perf_counter around each call),

for the encode, generate and reconstruct signatures at batch 1 (latency) and
--batch (throughput), --runs timed runs each after one untimed run; medians
are reported, in a markdown table, with the machine (lscpu's model name).
Nothing else should run on the machine meanwhile.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from age_tf import config as config_lib
from age_tf import export
from age_tf.methods import METHODS

SIGNATURES = ("encode", "generate", "reconstruct")


def cpu_model():
  try:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    (name,) = re.findall(r"^Model name:\s*(.+)$", out, re.MULTILINE)[:1]
    return name.strip()
  except (OSError, subprocess.CalledProcessError, ValueError):
    import platform  # pylint: disable=g-import-not-at-top
    return platform.processor() or "unknown CPU"


def untrained_export(method, dataset, directory):
  config = config_lib.resolve({"method": method, "dataset": dataset,
                               "model_dir": os.path.join(directory, "run")})
  model = METHODS[config.method].create(config)
  return export.write_export(model, config, 0, os.path.join(directory, "serving"))


def build_binary(directory):
  binary = os.path.join(directory, "saved_model_check")
  subprocess.run([os.path.join(ROOT, "export", "build.sh"), binary], check=True,
                 env=dict(os.environ, PYTHON=sys.executable), stdout=subprocess.DEVNULL)
  return binary


def inputs_for(metadata, batch, rng):
  """{signature: (input name, array)} at `batch` rows."""
  shape, m = metadata["image_shape"], metadata["latent_dim"]
  images = rng.uniform(-1, 1, (batch, *shape)).astype(np.float32)
  codes = rng.standard_normal((batch, m)).astype(np.float32)
  if metadata["prior"] == "sphere":
    codes /= np.linalg.norm(codes, axis=1, keepdims=True)
  return {"encode": ("images", images), "generate": ("codes", codes),
          "reconstruct": ("images", images)}


def time_cpp(binary, version_dir, name, key, path, runs, threads):
  result = subprocess.run(
      [binary, version_dir, f"--run={name}", f"--input={key}={path}", f"--repeat={runs}",
       f"--intra_op_threads={threads}", f"--inter_op_threads={threads}"],
      capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"saved_model_check failed:\n{result.stderr[-3000:]}")
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("timing ")]
  return float(dict(item.split("=") for item in line.split()[1:])["median_ms"])


def time_python(loaded, name, key, array, runs):
  function = loaded.signatures[name]
  tensor = tf.constant(array)
  {k: v.numpy() for k, v in function(**{key: tensor}).items()}  # the untimed run
  times = []
  for _ in range(runs):
    began = time.perf_counter()
    {k: v.numpy() for k, v in function(**{key: tensor}).items()}
    times.append((time.perf_counter() - began) * 1000)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--method", default="age")
  parser.add_argument("--dataset", default="cifar10")
  parser.add_argument("--export", help="an existing version directory (default: export the "
                      "untrained --method/--dataset model to a temporary directory)")
  parser.add_argument("--binary", help="a built saved_model_check (default: build one)")
  parser.add_argument("--runs", type=int, default=30, help="timed runs per figure")
  parser.add_argument("--batch", type=int, default=64, help="the throughput batch")
  parser.add_argument("--threads", type=int, default=0,
                      help="intra- and inter-op threads of both loaders (0: TensorFlow's "
                      "default, one per core)")
  args = parser.parse_args()
  if args.threads:
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)

  with tempfile.TemporaryDirectory(prefix="age_tf_serving_bench_") as directory:
    version_dir = args.export or untrained_export(args.method, args.dataset, directory)
    binary = args.binary or build_binary(directory)
    metadata = export.read_metadata(version_dir)
    loaded = tf.saved_model.load(version_dir)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, args.batch):
      for name, (key, array) in inputs_for(metadata, batch, rng).items():
        path = os.path.join(directory, f"{name}_{batch}.npy")
        np.save(path, array)
        cpp = time_cpp(binary, version_dir, name, key, path, args.runs, args.threads)
        python = time_python(loaded, name, key, array, args.runs)
        rows.append((name, batch, cpp, python))

  print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs; TensorFlow {tf.__version__}; "
        f"threads: {args.threads or 'default'}")
  print(f"export: {metadata['method']} {metadata['dataset']} {'x'.join(map(str, metadata['image_shape']))}"
        f", M={metadata['latent_dim']}, step {metadata['step']}; medians of {args.runs} runs")
  print("| signature | batch | C++ loader ms | C++ examples/s | Python loader ms | "
        "Python examples/s |")
  print("|---|---|---|---|---|---|")
  for name, batch, cpp, python in rows:
    print(f"| {name} | {batch} | {cpp:.2f} | {batch / cpp * 1000:.0f} | {python:.2f} | "
          f"{batch / python * 1000:.0f} |")


if __name__ == "__main__":
  main()
