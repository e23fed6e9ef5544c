"""Keras's BatchNormalization whose training-mode pass is TensorFlow's fused kernel.

Keras 3 normalises with separate ops (moments, then the affine transform,
each with its own gradient ops, and casts to float32 and back under a mixed
policy). TensorFlow's FusedBatchNormV3 computes the same training-mode
normalisation in one op forward and one (FusedBatchNormGradV3) backward, in
float32 statistics for float32, bfloat16 and float16 inputs alike; on CPUs
it is oneDNN's kernel. The layer below takes that path in training mode and
keeps everything else Keras's: the variables and their names (checkpoints
are interchangeable), the moving-average update (the biased batch variance,
as Keras computes it), inference mode, and synchronized (cross-replica)
statistics, which the fused op cannot all-reduce. Under XLA (--jit_compile)
it is Keras's call too: XLA fuses those ops itself, and its own lowering of
FusedBatchNormV3 computes the variance as E[x^2] - E[x]^2, which loses
precision where the mean is large against the spread.
"""

import keras
import tensorflow as tf
# tf_keras takes the same look at the graph to tell an XLA context.
from tensorflow.python.ops import control_flow_util  # pylint: disable=g-direct-tensorflow-import


def _in_xla_context():
  return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


@keras.saving.register_keras_serializable(package="age_tf")
class BatchNormalization(keras.layers.BatchNormalization):
  """keras.layers.BatchNormalization; training mode runs FusedBatchNormV3.

  Same results as Keras's layer to float rounding (tests/batch_norm_test.py):
  outputs, gradients and moving statistics. Falls back to Keras's call for
  synchronized statistics, masks, renorm, a non-last axis, inputs other
  than (batch, channels) or (batch, H, W, channels), and XLA. Setting the class
  attribute `fused` to False before a model is traced gives Keras's call
  everywhere (benchmarks/ablation.py --change=batch_norm).
  """

  fused = True

  def _fused_applies(self, inputs, mask):
    return (self.fused and not self.synchronized and mask is None and not self.renorm
            and self.axis in (-1, len(inputs.shape) - 1) and len(inputs.shape) in (2, 4)
            and inputs.shape[-1] is not None and not _in_xla_context())

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable and self._fused_applies(inputs, mask)):
      return super().call(inputs, training=training, mask=mask)
    channels = inputs.shape[-1]
    x = inputs if len(inputs.shape) == 4 else tf.reshape(inputs, [-1, 1, 1, channels])
    scale = self.gamma if self.scale else tf.ones([channels], tf.float32)
    offset = self.beta if self.center else tf.zeros([channels], tf.float32)
    y, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
        x, tf.cast(scale, tf.float32), tf.cast(offset, tf.float32), epsilon=self.epsilon,
        data_format="NHWC", is_training=True)
    # The op returns Bessel's n / (n - 1) variance for the moving average;
    # Keras (and so every checkpoint so far) averages the biased one.
    count = tf.cast(tf.size(x) // channels, tf.float32)
    variance = unbiased_variance * tf.maximum(count - 1.0, 0.0) / count
    momentum = self.momentum
    self.moving_mean.assign(self.moving_mean * momentum + mean * (1.0 - momentum))
    self.moving_variance.assign(self.moving_variance * momentum + variance * (1.0 - momentum))
    y = y if len(inputs.shape) == 4 else tf.reshape(y, tf.shape(inputs))
    return tf.cast(y, self.compute_dtype)
