"""Runs pytest on the test modules given as arguments: the main of each Bazel py_test.

Bazel runs a test from its runfiles tree, whose root holds pytest.ini,
tests/conftest.py and the age_tf package, so `python -m age_tf.train`
subprocesses with PYTHONPATH set to that root (conftest.run_module) run the
runfiles' copy. Set AGE_TF_PYTHON (bazel test --test_env=AGE_TF_PYTHON=...)
to run the tests with that interpreter, e.g. the virtualenv holding the
requirements when Bazel's own Python toolchain has none of them.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
  python = os.environ.get("AGE_TF_PYTHON")
  if python and os.path.abspath(python) != os.path.abspath(sys.executable):
    if os.environ.get("AGE_TF_PYTHON_EXECED"):
      sys.exit(f"pytest_main: could not switch to AGE_TF_PYTHON={python}")
    env = dict(os.environ, AGE_TF_PYTHON_EXECED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    os.execve(python, [python, os.path.abspath(__file__), *argv], env)

  # Python puts the script's resolved directory (the source tree's tests/)
  # first on sys.path; drop it so that every import comes from the runfiles.
  here = os.path.dirname(os.path.realpath(__file__))
  if here != os.path.dirname(os.path.abspath(__file__)):
    sys.path[:] = [p for p in sys.path if p != here]

  import pytest  # pylint: disable=g-import-not-at-top

  os.chdir(ROOT)
  # Bazel runs each module as its own target, in parallel: one process per
  # target (pytest.ini's addopts would start pytest-xdist workers).
  args = [*argv, "-p", "no:cacheprovider", "-o", "addopts=-ra"]
  plugins = []
  shards = int(os.environ.get("TEST_TOTAL_SHARDS", "1"))
  if shards > 1:  # py_test(shard_count = N): this process runs every Nth test
    plugins.append(Shard(int(os.environ["TEST_SHARD_INDEX"]), shards))
    if os.environ.get("TEST_SHARD_STATUS_FILE"):  # tells Bazel that sharding is supported
      open(os.environ["TEST_SHARD_STATUS_FILE"], "w").close()
  if os.environ.get("TEST_TMPDIR"):  # Bazel's per-test temporary directory
    args.append("--basetemp=" + os.path.join(os.environ["TEST_TMPDIR"], "pytest"))
  if os.environ.get("XML_OUTPUT_FILE"):  # Bazel's test.xml
    args.append("--junitxml=" + os.environ["XML_OUTPUT_FILE"])
  if os.environ.get("TESTBRIDGE_TEST_ONLY"):  # bazel test --test_filter=EXPR
    args += ["-k", os.environ["TESTBRIDGE_TEST_ONLY"]]
  code = pytest.main(args, plugins=plugins)
  if shards > 1 and code == pytest.ExitCode.NO_TESTS_COLLECTED:
    return 0  # more shards than tests
  return code


class Shard:
  """Keeps the collected tests whose position modulo the shard count is this shard's index."""

  def __init__(self, index, count):
    self.index, self.count = index, count

  def pytest_collection_modifyitems(self, config, items):
    kept = [item for i, item in enumerate(items) if i % self.count == self.index]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
