"""Shared fixtures: quiet TensorFlow logs, and one short digits training run reused by several tests."""

import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, timeout=1800, env=None):
  """Runs `python -m module args` from the repository root; returns the CompletedProcess."""
  full_env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=full_env,
                        capture_output=True, text=True, timeout=timeout)


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


# The learning run is the README's first command, as written but for the
# model_dir: digits with its defaults, 40 epochs of 23 steps (about two and a
# half minutes on a 2-core CPU). Tests of learning, TensorBoard events, PNGs
# and flags.json read its model_dir.
LEARNING_STEPS = 40 * 23


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("digits_run"))
  result = run_module("age_tf.train", "--method=age", "--dataset=digits",
                      f"--model_dir={model_dir}")
  assert result.returncode == 0, result.stderr[-5000:]
  return model_dir, result


# ------------------------------------------------ parallel runs (pytest-xdist)
#
# pytest.ini runs the suite on several worker processes (-n, --dist=loadgroup).
# Tests that share a module- or session-scoped fixture (a training run, an
# export, a compiled program) must run on one worker, or each worker would
# build the fixture again: pytest_collection_modifyitems puts every such test
# in one xdist group per connected set of shared fixtures (a parametrized
# fixture gives one group per parameter). Ungrouped tests are scheduled one
# by one. The work queue follows the collection order, so the groups and
# tests that take longest go first (LONGEST_FIRST), to overlap with the rest.

# Test modules, longest first (pytest --durations on a 2-core CPU): their
# tests are scheduled before every other module's.
LONGEST_FIRST = ("gali_learning_test.py", "evaluate_test.py", "learning_test.py",
                 "train_test.py", "reliability_test.py", "distributed_test.py",
                 "build_test.py", "export_test.py", "speed_test.py", "gali_test.py",
                 "install_test.py", "vae_test.py", "serving_cpp_test.py",
                 "inference_statistics_test.py", "classifier_test.py")


def _shared_fixture_keys(item):
  """The module- and session-scoped fixtures of this repository that the test uses, and
  the groups it names itself (a fixture taken with getfixturevalue is invisible here)."""
  keys = [mark.args[0] for mark in item.iter_markers("xdist_group")]  # named by the test
  params = getattr(getattr(item, "callspec", None), "params", {})
  for name in item.fixturenames:
    definitions = item._fixtureinfo.name2fixturedefs.get(name)  # pylint: disable=protected-access
    if not definitions:
      continue
    definition = definitions[-1]
    if definition.scope == "function" or not definition.baseid:  # pytest's own have no baseid
      continue
    key = name if definition.scope == "session" else f"{item.module.__name__}.{name}"
    if name in params:
      key += f"={params[name]}"  # no brackets: xdist reads "@group" only after the last "]"
    keys.append(key)
  return keys


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config, items):
  del config
  parent = {}

  def find(key):
    while parent.setdefault(key, key) != key:
      key = parent[key]
    return key

  item_keys = [_shared_fixture_keys(item) for item in items]
  for keys in item_keys:
    for key in keys[1:]:
      parent[find(key)] = find(keys[0])
  for item, keys in zip(items, item_keys):
    if keys:
      item.add_marker(pytest.mark.xdist_group(find(keys[0])))

  def rank(item):
    name = os.path.basename(str(item.path))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: each module keeps its order
