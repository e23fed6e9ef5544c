"""On 2 logical CPU replicas the estimators see the global batch, and training runs mirrored.

Each check runs in a fresh process: logical devices must be configured
before TensorFlow starts, and a process can hold only one MirroredStrategy.
"""

import json
import os
import subprocess
import sys

from conftest import ROOT, run_module

ESTIMATOR_CHECK = r"""
import json
import numpy as np
import tensorflow as tf
from age_tf import distribute, divergences

strategy = distribute.make_strategy("mirrored", num_cpu_replicas=2)
assert strategy.num_replicas_in_sync == 2
codes = np.random.default_rng(0).normal(0.2, 0.3, (64, 10))
halves = [codes[:32], codes[32:]]
values = strategy.experimental_distribute_values_from_function(
    lambda ctx: tf.constant(halves[ctx.replica_id_in_sync_group]))
result = {}
for name in ("moments", "knn"):
  def replica_fn(local):
    with tf.GradientTape() as tape:
      tape.watch(local)
      kl, _, _ = divergences.kl_and_moments(local, name)
    # As the methods do: each replica's loss is divided by the replica count.
    return kl, tape.gradient(kl, local, output_gradients=tf.constant(0.5, tf.float64))
  kl, grad = strategy.run(tf.function(replica_fn), args=(values,))
  full = tf.constant(codes)
  with tf.GradientTape() as tape:
    tape.watch(full)
    single, _, _ = divergences.kl_and_moments(full, name)
  single_grad = tape.gradient(single, full).numpy()
  kls = [float(v) for v in strategy.experimental_local_results(kl)]
  grads = np.concatenate([g.numpy() for g in strategy.experimental_local_results(grad)])
  naive = np.mean([float(divergences.kl_and_moments(tf.constant(h), name)[0]) for h in halves])
  result[name] = dict(replica_kls=kls, single=float(single), naive=float(naive),
                      grad_error=float(np.abs(grads - single_grad).max()),
                      grad_scale=float(np.abs(single_grad).max()))
print("RESULT" + json.dumps(result))
"""


def test_estimators_use_the_global_batch_across_replicas():
  env = dict(os.environ, PYTHONPATH=ROOT)
  out = subprocess.run([sys.executable, "-c", ESTIMATOR_CHECK], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.split("RESULT", 1)[1])
  for name, r in result.items():
    # Every replica computes the single-device value on the concatenated batch,
    for value in r["replica_kls"]:
      assert abs(value - r["single"]) < 1e-10, (name, r)
    # and the per-replica gradients are the single-device gradient's rows.
    assert r["grad_error"] < 1e-10 * max(1.0, r["grad_scale"]), (name, r)
    # The naive average of per-replica estimates is a different number, so
    # this test would catch a missing all-reduce.
    assert abs(r["naive"] - r["single"]) > 1e-3, (name, r)


def test_training_runs_on_two_replicas(tmp_path):
  result = run_module("age_tf.train", "--dataset=digits", "--width=8", "--batch_size=16",
                      "--train_steps=4", "--log_every=2", "--num_cpu_replicas=2",
                      f"--model_dir={tmp_path}", timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "on 2 replica(s)" in result.stderr
  assert os.path.exists(tmp_path / "checkpoints" / "ckpt-4.index")


def test_batch_that_does_not_split_over_replicas_is_refused(tmp_path):
  result = run_module("age_tf.train", "--dataset=digits", "--width=8", "--batch_size=15",
                      "--train_steps=2", "--num_cpu_replicas=2", f"--model_dir={tmp_path}",
                      timeout=300)
  assert result.returncode == 2
  assert "--batch_size=15 does not split evenly over 2 replicas" in result.stderr
  assert "Traceback" not in result.stderr
