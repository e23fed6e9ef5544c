"""The Bazel BUILD file: every test module has a py_test, every file it names exists, and it builds.

The first checks read BUILD as the Python it nearly is (Starlark's BUILD
dialect), with the rules replaced by functions that record them, so they run
everywhere. The last runs Bazel itself: `bazel build //...` (every target,
the slow tests included) and `bazel test` on the fast tests (everything not
tagged "slow", never answered from Bazel's cache), with this interpreter's
virtualenv, in Bazel's usual output base (~/.cache/bazel), whose server it
shuts down at the end. Without `bazel` on PATH it is skipped, unless
AGE_TF_REQUIRE_BAZEL=1 (CI sets it after installing Debian's bazel-bootstrap)
makes that a failure.
"""

import glob
import os
import shutil
import subprocess
import sys
import time

import pytest

# The source tree (not a Bazel runfiles tree, where tests/ holds only this
# target's files).
ROOT = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
BUILD = os.path.join(ROOT, "BUILD")

# Each Bazel command's wall-clock limit. The fast tests take about 2-5
# minutes on a 2-core CPU; the first command also starts Bazel's server.
BAZEL_TIMEOUT = 1200


def read_build():
  """Evaluates BUILD; returns {name: (rule kind, attributes)} of its targets."""
  targets = {}

  def rule(kind):
    def record(name, **attrs):
      assert name not in targets, f"BUILD defines {name!r} twice"
      targets[name] = (kind, attrs)
    return record

  def glob_(include, exclude=()):
    found = set()
    for pattern in include:
      matches = [os.path.relpath(p, ROOT) for p in
                 glob.glob(os.path.join(ROOT, pattern), recursive=True) if os.path.isfile(p)]
      assert matches, f"BUILD: glob {pattern!r} matches no file"
      found.update(matches)
    for pattern in exclude:
      found -= {os.path.relpath(p, ROOT) for p in
                glob.glob(os.path.join(ROOT, pattern), recursive=True)}
    return sorted(found)

  def load(label, *symbols):
    assert label == "@rules_python//python:defs.bzl", f"BUILD loads {label}"
    assert set(symbols) <= {"py_binary", "py_library", "py_test"}, symbols

  scope = {"load": load, "glob": glob_, "package": lambda **_: None,
           **{kind: rule(kind) for kind in ("py_binary", "py_library", "py_test", "filegroup")}}
  with open(BUILD) as f:
    exec(compile(f.read(), BUILD, "exec"), scope)  # pylint: disable=exec-used
  return targets


TARGETS = read_build()


def of_kind(kind):
  return {name: attrs for name, (k, attrs) in TARGETS.items() if k == kind}


def test_every_test_module_has_a_py_test_that_runs_it():
  modules = sorted(os.path.basename(p)[:-len(".py")]
                   for p in glob.glob(os.path.join(ROOT, "tests", "*_test.py")))
  assert modules, "no tests/*_test.py"
  tests = of_kind("py_test")
  missing = [m for m in modules if m not in tests]
  assert not missing, f"tests/*_test.py without a py_test target in BUILD: {missing}"
  for name in modules:
    attrs = tests[name]
    source = f"tests/{name}.py"
    assert source in attrs["srcs"], f"py_test {name}: srcs lack {source}"
    assert attrs.get("main") == "tests/pytest_main.py", f"py_test {name}: main is not the runner"
    assert attrs.get("args") == [source], f"py_test {name}: args must be [{source!r}]"
    assert ":test_support" in attrs.get("deps", []), f"py_test {name}: no :test_support"
    assert attrs.get("legacy_create_init") == 0, f"py_test {name}: needs legacy_create_init = 0"
  stale = sorted(set(tests) - set(modules))
  assert not stale, f"py_test targets without a tests/<name>.py: {stale}"


def test_every_entry_point_has_a_py_binary():
  entry_points = []
  for path in sorted(glob.glob(os.path.join(ROOT, "age_tf", "*.py"))):
    with open(path) as f:
      if 'if __name__ == "__main__":' in f.read():
        entry_points.append(os.path.basename(path)[:-len(".py")])
  assert {"train", "evaluate", "export", "classifier"} <= set(entry_points)
  binaries = of_kind("py_binary")
  for name in entry_points:
    assert name in binaries, f"age_tf/{name}.py has a main but no py_binary //:{name}"
    assert binaries[name]["main"] == f"age_tf/{name}.py"
    assert ":age_tf" in binaries[name]["deps"]


def test_every_file_and_label_named_in_build_exists():
  problems = []
  for name, (kind, attrs) in TARGETS.items():
    for attr in ("srcs", "data", "deps"):
      for item in attrs.get(attr, []):
        if item.startswith(":"):
          if item[1:] not in TARGETS:
            problems.append(f"{kind} {name}: {attr} names undefined target {item}")
        elif item.startswith(("//", "@")):
          problems.append(f"{kind} {name}: {attr} names {item}; expected a file or :target")
        elif not os.path.isfile(os.path.join(ROOT, item)):
          problems.append(f"{kind} {name}: {attr} names missing file {item}")
    main = attrs.get("main")
    if main and main not in attrs.get("srcs", []):
      problems.append(f"{kind} {name}: main {main} is not among its srcs")
  assert not problems, "\n".join(problems)


def test_slow_tests_are_tagged_and_build_test_is_manual():
  for name, attrs in of_kind("py_test").items():
    tags = attrs.get("tags", [])
    if attrs.get("size") in ("large", "enormous") and name != "build_test":
      assert "slow" in tags, f"py_test {name} is {attrs['size']} but not tagged slow"
  # Bazel must never run this module itself (it runs Bazel): not part of //...
  assert "manual" in of_kind("py_test")["build_test"].get("tags", [])


def _site_packages():
  import sysconfig  # pylint: disable=g-import-not-at-top
  return sysconfig.get_paths()["purelib"]


def _bazel(bazel, *args, env):
  command = [bazel, "--max_idle_secs=600", *args]
  began = time.monotonic()
  result = subprocess.run(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=BAZEL_TIMEOUT)
  seconds = time.monotonic() - began
  print(f"$ {' '.join(command)}\n  exit {result.returncode} in {seconds:.0f} s")
  tail = result.stdout[-8000:]
  if "error loading package 'bazel-" in tail:
    tail += ("\n(bazel-* symlinks into another output base: remove them, "
             "rm " + os.path.join(ROOT, "bazel-*") + ")")
  assert result.returncode == 0, f"{' '.join(command)} exited {result.returncode}:\n{tail}"
  return result.stdout


def test_bazel_builds_everything_and_passes_the_fast_tests():
  if os.environ.get("TEST_SRCDIR"):
    pytest.skip("runs Bazel: run this module with pytest, not under Bazel")
  bazel = shutil.which("bazel")
  if not bazel:
    message = ("bazel is not on PATH (Debian: apt-get install bazel-bootstrap "
               "bazel-rules-java; see the README's Bazel section)")
    if os.environ.get("AGE_TF_REQUIRE_BAZEL") == "1":
      pytest.fail(message + "; AGE_TF_REQUIRE_BAZEL=1 requires it")
    pytest.skip(message)

  # As with the virtualenv activated: Bazel 4.2.3's Python toolchain runs
  # `python3` from PATH. AGE_TF_PYTHON makes the test runner switch to this
  # interpreter whatever Bazel's toolchain starts (tests/pytest_main.py), and
  # PYTHONPATH hands that one the requirements even before it switches.
  python = os.path.abspath(sys.executable)
  env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(python), os.environ["PATH"]]))
  env.pop("PYTHONPATH", None)
  flags = ["--symlink_prefix=/",  # leave no bazel-* symlinks in the source tree
           f"--test_env=AGE_TF_PYTHON={python}",
           f"--test_env=PYTHONPATH={_site_packages()}"]
  try:
    _bazel(bazel, "build", *flags, "//...", env=env)
    out = _bazel(bazel, "test", *flags, "--test_tag_filters=-slow", "--nocache_test_results",
                 "--test_output=errors", "//...", env=env)
    summary = [line for line in out.splitlines() if line.startswith("//:")]
    print("\n".join(summary))
    assert summary and all("PASSED" in line for line in summary), out[-8000:]
    assert not any(name in out for name in ("//:learning_test", "//:build_test"))
  finally:
    subprocess.run([bazel, "shutdown"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, timeout=120)
