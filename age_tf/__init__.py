"""age_tf: AGE and the ALI/GALI family of bidirectional generative models in TensorFlow."""

__version__ = "0.1.0"
