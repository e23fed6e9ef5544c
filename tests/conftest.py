"""Shared fixtures: quiet TensorFlow logs, and one short digits training run reused by several tests."""

import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import forkserver

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One intra-op thread per TensorFlow process (this one and the commands the
# tests start): the suite keeps every core busy (a worker per core and one
# more, tests/parallel.py), and two processes each running two intra-op
# threads on two cores spend a sixth of their CPU time waiting on each
# other's threads (benchmarks/README.md, the test suite). Sums then run in another order, so a long run's trajectory is
# not the one it takes with more threads; the learning bars hold for both.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The commands the tests run start as forks of a Python that has imported
# TensorFlow (tests/forkserver.py): as `python -m` runs them, without the
# 5 CPU-seconds of imports each.
COMMANDS = forkserver.Server(ROOT)


def command_env(env=None):
  """The environment of the commands the tests start: this one, with the repository on the path."""
  python_path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
  return {**os.environ, "PYTHONPATH": python_path, **(env or {})}


def run_module(module, *args, timeout=1800, env=None, fresh=False):
  """Runs `python -m module args` from the repository root; returns the CompletedProcess.

  fresh: in a new interpreter instead of a fork of the tests' fork server.
  """
  if fresh:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=command_env(env),
                          capture_output=True, text=True, timeout=timeout)
  return COMMANDS.run("-m", module, args, command_env(env), ROOT, timeout=timeout)


def run_code(code, *args, timeout=1800, env=None):
  """Runs `python -c code args` from the repository root; returns the CompletedProcess."""
  return COMMANDS.run("-c", code, args, command_env(env), ROOT, timeout=timeout)


def start_module(module, *args, env=None, niceness=0):
  """Starts `python -m module args` from the repository root; returns a Popen-like Process."""
  return COMMANDS.start("-m", module, args, command_env(env), ROOT, niceness=niceness)


def snapshot(variables):
  """Copies of variables' values."""
  return [v.numpy().copy() for v in variables]


def changed(before, variables):
  """Per variable: whether it differs from its snapshot."""
  return [not np.array_equal(b, v.numpy()) for b, v in zip(before, variables)]


def read_events(model_dir):
  """TensorBoard's own reader over a run's train/ events."""
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(model_dir, "train"), size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return accumulator


# Adam settings under which a training step is a smooth function of its
# inputs, for tests that compare two computations of the same step (XLA,
# sub-pixel convolutions, 2 replicas). AGE's generator loss (z_recon weight
# 1000) has gradients of 1 to 70, for which Adam's first updates are nearly
# lr * sign(gradient): with the digits config's tiny networks (width 4,
# batch 16) 1e-7 rounding differences then moved some weights by a whole
# update within one step for some initial states (XLA against graph, fused
# against Keras's BatchNorm, 2 replicas against one alike; gradients agreed
# to 1e-6). With epsilon 1e3 Adam's update is proportional to the gradient
# (gradient descent with a small step, which learning rate 1 brings to moves
# of 1e-3). GALI-4's gradients are small enough at epsilon 1e-3.
STEADY_ADAM = {"age": dict(adam_epsilon=1e3, learning_rate=1.0), "gali4": dict(adam_epsilon=1e-3)}


# The learning run is the README's first command but for the model_dir and
# the width: digits with its defaults, 40 epochs of 23 steps, at width 8
# instead of 16 (about two minutes of one core instead of three and a half).
# At width 8, seeds 1, 2, 3 and 123 (the default) met learning_test's bars
# with room (pixel MSE 0.019-0.025 against 0.035, e(g(z)) variance
# 0.085-0.099 against 0.05-0.2, KL 2.10-2.45 against 3.31).
# Tests of learning, TensorBoard events, PNGs and flags.json read its
# model_dir.
LEARNING_STEPS = 40 * 23
LEARNING_WIDTH = 8


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("digits_run"))
  result = run_module("age_tf.train", "--method=age", "--dataset=digits",
                      f"--width={LEARNING_WIDTH}", f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-5000:]
  return model_dir, result


def pytest_configure(config):
  """One digits-classifier cache for the whole suite (evaluate's default --classifier_cache):
  the first evaluation that needs the classifier trains it, the others reuse it. Set by the
  controller before its workers start, so they inherit it; removed at the end."""
  if hasattr(config, "workerinput") or os.environ.get("AGE_TF_CACHE_DIR"):
    return
  config.age_tf_cache_dir = tempfile.mkdtemp(prefix="age_tf_test_cache_")
  os.environ["AGE_TF_CACHE_DIR"] = config.age_tf_cache_dir


def pytest_unconfigure(config):
  directory = getattr(config, "age_tf_cache_dir", None)
  if directory:
    shutil.rmtree(directory, ignore_errors=True)
    del os.environ["AGE_TF_CACHE_DIR"]


# Parallel runs (pytest-xdist): the test order and the scheduler that keeps
# tests sharing a fixture on one worker (tests/parallel.py).
# pylint: disable=unused-import,g-import-not-at-top,wrong-import-position
from parallel import pytest_collection_modifyitems
from parallel import pytest_configure_node
from parallel import pytest_xdist_auto_num_workers
from parallel import pytest_xdist_make_scheduler
