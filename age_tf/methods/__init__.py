"""The training methods by --method name: AGE and the ALI/GALI family."""

from age_tf.methods import gali
from age_tf.methods.age import AGE

METHODS = {"age": AGE, **gali.METHODS}
