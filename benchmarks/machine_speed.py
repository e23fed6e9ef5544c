"""The machine's speed now: float32 matmul GFLOP/s, to set suite and benchmark runs from different hours side by side.

    python benchmarks/machine_speed.py                        # TensorFlow's default threads
    TF_NUM_INTRAOP_THREADS=1 python benchmarks/machine_speed.py

The shared 2-core machines of this project ran the same commands up to
1.6x slower in some hours than in others; a suite time means little
without this figure from just before and after it. Median of 5 rounds of
20 products of 2048x2048 matrices.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # pylint: disable=g-import-not-at-top


def main():
  a = tf.random.normal((2048, 2048))
  b = tf.random.normal((2048, 2048))
  matmul = tf.function(tf.matmul, autograph=False)
  matmul(a, b).numpy()
  rates = []
  for _ in range(5):
    began = time.perf_counter()
    for _ in range(20):
      c = matmul(a, b)
    c.numpy()
    rates.append(20 * 2 * 2048 ** 3 / (time.perf_counter() - began) / 1e9)
  print(f"float32 matmul: {statistics.median(rates):.0f} GFLOP/s "
        f"(rounds {min(rates):.0f}-{max(rates):.0f}; "
        f"{os.environ.get('TF_NUM_INTRAOP_THREADS', 'default')} intra-op threads)")


if __name__ == "__main__":
  main()
