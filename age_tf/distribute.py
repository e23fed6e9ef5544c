"""Chooses the tf.distribute strategy (--strategy, --num_cpu_replicas) and the chief worker."""

import json
import os

import tensorflow as tf

from age_tf.errors import UserError


def split_cpu(num_replicas):
  """Splits the CPU into `num_replicas` logical devices (before TensorFlow starts)."""
  if num_replicas <= 1:
    return
  cpu = tf.config.list_physical_devices("CPU")[0]
  try:
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_replicas)
  except RuntimeError as e:  # TensorFlow already started in this process.
    have = len(tf.config.list_logical_devices("CPU"))
    if have < num_replicas:
      raise UserError(f"--num_cpu_replicas={num_replicas}: TensorFlow already started with "
                      f"{have} CPU device(s); set it before any TensorFlow work.") from e


STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")


def make_strategy(name="auto", num_cpu_replicas=1):
  """auto: mirrored over 2+ local GPUs, else over --num_cpu_replicas CPUs, else one device.

  multi_worker: MultiWorkerMirroredStrategy over the cluster in TF_CONFIG (each
  worker's local GPUs, or its CPU).

  One device is TensorFlow's default strategy (ops on the first GPU, else the
  CPU), not tf.distribute.OneDeviceStrategy: on a CPU, once a OneDeviceStrategy
  (or one-device MirroredStrategy) input pipeline exists, a training step runs
  markedly slower than the same step under the default strategy
  (benchmarks/README.md has figures).
  """
  if name == "multi_worker":
    return _multi_worker()
  split_cpu(num_cpu_replicas)
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:num_cpu_replicas]
  if name == "mirrored" or (name == "auto" and (len(gpus) > 1 or num_cpu_replicas > 1)):
    return tf.distribute.MirroredStrategy(devices=gpus or cpus)
  if name in ("auto", "one_device"):
    return tf.distribute.get_strategy()
  raise UserError(f"Unknown --strategy={name!r}; valid: {', '.join(STRATEGIES)}.")


def _multi_worker():
  raw = os.environ.get("TF_CONFIG", "")
  try:
    tf_config = json.loads(raw) if raw else {}
  except json.JSONDecodeError as e:
    raise UserError(f"TF_CONFIG is not valid JSON ({e}); see the README's multi-worker "
                    "section.") from e
  workers = tf_config.get("cluster", {}).get("worker", [])
  if not workers or "task" not in tf_config:
    raise UserError("--strategy=multi_worker needs TF_CONFIG with a cluster and this "
                    "process's task, e.g. TF_CONFIG='{\"cluster\": {\"worker\": "
                    "[\"host1:port\", \"host2:port\"]}, \"task\": {\"type\": \"worker\", "
                    "\"index\": 0}}'.")
  return tf.distribute.MultiWorkerMirroredStrategy()


def worker_id(strategy):
  """(task_type, task_id) of this process in a multi-worker cluster, or None."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.cluster_spec().as_dict():
    return None
  return resolver.task_type, resolver.task_id


def is_chief(strategy):
  """Whether this process writes the run's files: the chief, worker 0, or a lone process."""
  worker = worker_id(strategy)
  if worker is None:
    return True
  task_type, task_id = worker
  cluster = strategy.cluster_resolver.cluster_spec().as_dict()
  return task_type == "chief" or (task_type == "worker" and task_id == 0
                                  and "chief" not in cluster)
