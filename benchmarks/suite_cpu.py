"""Where the test suite's CPU time goes: a pytest plugin that records each test's CPU seconds, and its report.

Record (from the repository root; every xdist worker appends to its own file):

    AGE_TF_SUITE_CPU_DIR=/tmp/suite_cpu PYTHONPATH=benchmarks \
        python -m pytest -p suite_cpu --durations=60

Report, per test module and for the slowest tests:

    python benchmarks/suite_cpu.py /tmp/suite_cpu

Each row is one phase (setup, call, teardown) of one test: the worker's own
CPU seconds, those of the child processes it waited for (the commands a test
starts; `getrusage` RUSAGE_CHILDREN, and what tests/forkserver.py reports for
the commands it forks), and the wall time. A daemon the test
does not wait for (Bazel's server) is not counted in CPU, only in wall time.
"""

import collections
import os
import resource
import sys
import time

import pytest

DIR_VARIABLE = "AGE_TF_SUITE_CPU_DIR"


def _cpu_seconds():
  own = resource.getrusage(resource.RUSAGE_SELF)
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  # The commands tests/forkserver.py forks are its server's children, not
  # the worker's: the server reports each one's CPU when it ends.
  forkserver = sys.modules.get("forkserver")
  forked = forkserver.ended_commands_cpu() if forkserver else 0.0
  return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime + forked


def _record(item, phase, began_cpu, began_wall):
  directory = os.environ.get(DIR_VARIABLE)
  if not directory:
    return
  own, children = (now - then for now, then in zip(_cpu_seconds(), began_cpu))
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, f"{os.getpid()}.tsv"), "a") as f:
    f.write(f"{item.nodeid}\t{phase}\t{own:.2f}\t{children:.2f}\t"
            f"{time.monotonic() - began_wall:.2f}\n")


def _timed(phase):
  @pytest.hookimpl(hookwrapper=True)
  def hook(item):
    began_cpu, began_wall = _cpu_seconds(), time.monotonic()
    yield
    _record(item, phase, began_cpu, began_wall)
  return hook


pytest_runtest_setup = _timed("setup")
pytest_runtest_call = _timed("call")
pytest_runtest_teardown = _timed("teardown")


def report(directory, slowest=15):
  """Prints worker time and CPU seconds per worker, per module and for the slowest phases."""
  rows = []
  for name in sorted(os.listdir(directory)):
    with open(os.path.join(directory, name)) as f:
      for line in f:
        nodeid, phase, own, children, wall = line.rstrip("\n").split("\t")
        rows.append((name, nodeid, phase, float(own) + float(children), float(wall)))
  by_worker, by_module = collections.defaultdict(lambda: [0.0, 0.0]), collections.defaultdict(
      lambda: [0.0, 0.0])
  for worker, nodeid, _, cpu, wall in rows:
    for totals in (by_worker[worker], by_module[nodeid.split("::")[0]]):
      totals[0] += wall
      totals[1] += cpu
  print(f"{'wall s':>8} {'CPU s':>8}  worker")
  for worker, (wall, cpu) in sorted(by_worker.items()):
    print(f"{wall:8.1f} {cpu:8.1f}  {worker}")
  print(f"\n{'wall s':>8} {'CPU s':>8}  module")
  for module, (wall, cpu) in sorted(by_module.items(), key=lambda kv: -kv[1][0]):
    print(f"{wall:8.1f} {cpu:8.1f}  {module}")
  print(f"\n{'wall s':>8} {'CPU s':>8}  slowest phases")
  for _, nodeid, phase, cpu, wall in sorted(rows, key=lambda r: -r[4])[:slowest]:
    print(f"{wall:8.1f} {cpu:8.1f}  {phase:8} {nodeid}")


if __name__ == "__main__":
  if len(sys.argv) != 2 or not os.path.isdir(sys.argv[1]):
    sys.exit(f"usage: python {sys.argv[0]} DIR (the {DIR_VARIABLE} of a recorded suite run)")
  report(sys.argv[1])
