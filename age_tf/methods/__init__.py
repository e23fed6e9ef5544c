"""The training methods, by --method name."""

from age_tf.methods.age import AGE

METHODS = {"age": AGE}
