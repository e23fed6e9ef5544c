"""The parallel runs' scheduler: tests that share a fixture run on one worker, which builds it once."""

import os

pytest_plugins = ["pytester"]

TESTS = os.path.dirname(os.path.abspath(__file__))

COMMON = '''
import os
import pytest

def record(what):
  with open(os.path.join(os.environ["BUILT_DIR"], what), "a") as f:
    f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")

@pytest.fixture(scope="session")
def session_run():
  record("session_run")
'''
# First in the queue (file order): tests of two module fixtures, one test
# using both. Without the union of their groups the first two work units
# (first_run's tests, second_run's) go to two workers and both build
# second_run. Then a session fixture reached directly and through a module one.
SESSION_TESTS = COMMON + '''
@pytest.fixture(scope="module")
def first_run():
  record("first_run")

@pytest.fixture(scope="module")
def second_run():
  record("second_run")

@pytest.fixture(scope="module")
def uses_session(session_run):
  record("uses_session")

def test_first(first_run):
  record("ran-first")

def test_both(first_run, second_run):
  record("ran-first")
  record("ran-second")

def test_second(second_run):
  record("ran-second")

@pytest.mark.parametrize("i", range(3))
def test_session(session_run, i):
  record("ran-session")

@pytest.mark.parametrize("i", range(3))
def test_through_a_module_fixture(uses_session, i):
  record("ran-session")
'''
MODULE_TESTS = COMMON + '''
@pytest.fixture(scope="module", params=["x", "y"])
def module_run(request):
  record("module_run-" + request.param)
  return request.param

@pytest.mark.parametrize("i", range(4))
def test_module(module_run, i):
  record(f"ran-{module_run}")

@pytest.mark.parametrize("i", range(6))
def test_alone(i):
  record("ran-alone")
'''


def test_tests_sharing_a_fixture_run_on_one_worker_which_builds_it_once(pytester, tmp_path):
  pytester.makeconftest(f"import sys\nsys.path.insert(0, {TESTS!r})\n"
                        "from parallel import *  # noqa\n")
  pytester.makepyfile(a_session_test=SESSION_TESTS, b_module_test=MODULE_TESTS)
  built = tmp_path / "built"
  built.mkdir()
  os.environ["BUILT_DIR"] = str(built)
  try:
    result = pytester.runpytest_subprocess("-n", "2", "-p", "xdist", "-p", "no:cacheprovider",
                                           "-o", "python_files=*_test.py")
  finally:
    del os.environ["BUILT_DIR"]
  result.assert_outcomes(passed=23)

  def workers(name):
    return (built / name).read_text().split()

  # Each fixture once, on the worker that ran every test using it.
  for name in ("first_run", "second_run", "session_run", "uses_session", "module_run-x",
               "module_run-y"):
    assert len(workers(name)) == 1, (name, workers(name))
  assert set(workers("ran-x")) == set(workers("module_run-x"))
  assert set(workers("ran-y")) == set(workers("module_run-y"))
  assert set(workers("ran-session")) == set(workers("session_run"))
  assert set(workers("ran-first")) | set(workers("ran-second")) == set(workers("first_run"))
  # Both workers took part.
  everyone = set()
  for path in built.iterdir():
    everyone |= set(path.read_text().split())
  assert everyone == {"gw0", "gw1"}
