"""The training methods by --method name: each is one module of this package and one line here."""

from age_tf.methods import gali
from age_tf.methods.age import AGE
from age_tf.methods.vae import VAE

METHODS = {"age": AGE, **gali.METHODS, "vae": VAE}
