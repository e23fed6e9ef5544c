"""Parallel test runs (pytest-xdist): one worker per test group sharing a fixture, longest first."""

import json
import os

import pytest

# pytest.ini runs the suite on several worker processes (-n). Tests that share
# a module- or session-scoped fixture (a training run, an export, a compiled
# program) must run on one worker, or each worker would build the fixture
# again. Each worker names the group of every such test (one group per
# connected set of shared fixtures; a parametrized fixture gives one group
# per parameter) in a file the controller's scheduler reads: a group is sent
# to one worker whole, the other tests one by one. (xdist's own xdist_group
# marks do not group under pytest 9: xdist renames the nodeid through an
# attribute pytest 9 no longer reads.) The work queue follows the collection
# order, so the modules that take longest go first (LONGEST_FIRST) and
# overlap with the rest.

# Test modules, longest first (pytest --durations on a 2-core CPU): their
# tests are scheduled before every other module's.
LONGEST_FIRST = ("gali_learning_test.py", "evaluate_test.py", "learning_test.py",
                 "train_test.py", "reliability_test.py", "distributed_test.py",
                 "build_test.py", "export_test.py", "speed_test.py", "gali_test.py",
                 "install_test.py", "vae_test.py", "serving_cpp_test.py",
                 "inference_statistics_test.py", "classifier_test.py")
GROUPS_FILE = "age_tf_test_groups_file"  # the workers' input naming the groups file


def _shared_fixture_keys(item):
  """The module- and session-scoped fixtures of this repository that the test uses, and
  the groups it names itself (a fixture taken with getfixturevalue is invisible here)."""
  keys = [mark.args[0] for mark in item.iter_markers("xdist_group")]
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
      key += f"[{params[name]}]"
    keys.append(key)
  return keys


def shared_fixture_groups(items):
  """{nodeid: group} for the tests that share a fixture (union of their shared fixtures)."""
  parent = {}

  def find(key):
    while parent.setdefault(key, key) != key:
      key = parent[key]
    return key

  item_keys = [(item.nodeid, _shared_fixture_keys(item)) for item in items]
  for _, keys in item_keys:
    for key in keys[1:]:
      parent[find(key)] = find(keys[0])
  return {nodeid: find(keys[0]) for nodeid, keys in item_keys if keys}


def pytest_collection_modifyitems(config, items):
  def rank(item):
    name = os.path.basename(str(item.path))
    return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

  items.sort(key=rank)  # stable: each module keeps its order
  path = getattr(config, "workerinput", {}).get(GROUPS_FILE)
  if path:  # an xdist worker: every worker collects the same tests and writes the same groups
    temporary = f"{path}.{config.workerinput['workerid']}"
    with open(temporary, "w") as f:
      json.dump(shared_fixture_groups(items), f)
    os.replace(temporary, path)


def _groups_path(config):
  """The groups file, in the controller's base temporary directory."""
  base = config._tmp_path_factory.getbasetemp()  # pylint: disable=protected-access
  return os.path.join(str(base), "test_groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
  """-n auto: one worker more than the cores (pytest.ini caps it at 4).

  A part of the suite's time is spent waiting rather than computing (Bazel's
  server, a training process killed at a random moment, two workers of a
  cluster meeting): a third worker on two cores fills it.
  """
  del config
  return (os.cpu_count() or 1) + 1


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
  """xdist controller: each worker's input names the groups file."""
  node.workerinput[GROUPS_FILE] = _groups_path(node.config)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """xdist controller: a group of tests sharing a fixture goes to one worker whole."""
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top

  class SharedFixtureScheduling(LoadScopeScheduling):

    groups = None

    def _split_scope(self, nodeid):
      if self.groups is None:  # written by the workers' collection, which is complete here
        with open(_groups_path(config)) as f:
          self.groups = json.load(f)
      return self.groups.get(nodeid, nodeid)

  return SharedFixtureScheduling(config, log)
