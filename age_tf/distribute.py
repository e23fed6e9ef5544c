"""Chooses the tf.distribute strategy (--strategy, --num_cpu_replicas)."""

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


def make_strategy(name="auto", num_cpu_replicas=1):
  """auto: mirrored over local GPUs, else over --num_cpu_replicas CPUs, else one device."""
  split_cpu(num_cpu_replicas)
  gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
  cpus = [d.name for d in tf.config.list_logical_devices("CPU")][:num_cpu_replicas]
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else cpus[0])
  if name == "mirrored" or (name == "auto" and (gpus or num_cpu_replicas > 1)):
    return tf.distribute.MirroredStrategy(devices=gpus or cpus)
  if name == "auto":
    return tf.distribute.OneDeviceStrategy(cpus[0])
  raise UserError(f"Unknown --strategy={name!r}; valid: auto, mirrored, one_device.")
