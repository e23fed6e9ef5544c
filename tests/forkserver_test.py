"""The fork server runs a command as a new interpreter would: the same outputs, exit status and process."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import COMMANDS, ROOT, command_env, run_code, run_module

# What a process can tell about how it was started.
_REPORT = r"""
import atexit, json, os, sys, threading, time
def later():
  time.sleep(0.2)
  print("thread done", flush=True)
threading.Thread(target=later).start()  # not a daemon: the exit waits for it
atexit.register(lambda: print("atexit ran", file=sys.stderr))
print(json.dumps(dict(argv=sys.argv, path0=sys.path[0], cwd=os.getcwd(),
                      probe=os.environ.get("AGE_TF_PROBE"), pid=os.getpid(),
                      stdin=sys.stdin.read())))
sys.exit(int(sys.argv[1]))
"""


def _fresh(code, *args, env=None):
  return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=command_env(env),
                        capture_output=True, text=True, timeout=120)


def test_a_forked_command_sees_what_a_new_interpreter_sees():
  forked = run_code(_REPORT, "3", env={"AGE_TF_PROBE": "yes"}, timeout=120)
  fresh = _fresh(_REPORT, "3", env={"AGE_TF_PROBE": "yes"})
  for result in (forked, fresh):
    assert result.returncode == 3, result.stderr
    report, thread = result.stdout.splitlines()
    assert thread == "thread done"
    assert result.stderr.strip().endswith("atexit ran")
  forked_report, fresh_report = (json.loads(r.stdout.splitlines()[0]) for r in (forked, fresh))
  assert forked_report["pid"] not in (os.getpid(), fresh_report["pid"])
  for report in (forked_report, fresh_report):
    del report["pid"]
  assert forked_report == fresh_report == dict(argv=["-c", "3"], path0="", cwd=ROOT,
                                               probe="yes", stdin="")


def test_an_uncaught_exception_prints_its_traceback_and_exits_1():
  code = "raise ValueError('broken on purpose')"
  for result in (run_code(code, timeout=120), _fresh(code)):
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().endswith("ValueError: broken on purpose")


def test_a_module_runs_as_main_with_its_file_as_argv0(tmp_path):
  (tmp_path / "probe_module.py").write_text(
      "import json, sys\nprint(json.dumps([__name__, sys.argv, sys.path[0]]))\n")
  env = {"PYTHONPATH": str(tmp_path)}
  forked = run_module("probe_module", "--a", "b", env=env, timeout=120)
  fresh = run_module("probe_module", "--a", "b", env=env, timeout=120, fresh=True)
  assert forked.returncode == fresh.returncode == 0, (forked.stderr, fresh.stderr)
  assert json.loads(forked.stdout) == json.loads(fresh.stdout) == [
      "__main__", [str(tmp_path / "probe_module.py"), "--a", "b"], ROOT]


def test_signals_reach_the_command_and_the_status_says_so(tmp_path):
  marker = tmp_path / "started"
  code = ("import pathlib, sys, time; pathlib.Path(sys.argv[1]).touch(); time.sleep(60)")
  for sig in (signal.SIGKILL, signal.SIGTERM):
    process = COMMANDS.start("-c", code, [str(marker)], command_env(), ROOT)
    deadline = time.monotonic() + 60
    while not marker.exists():
      assert process.poll() is None and time.monotonic() < deadline
      time.sleep(0.01)
    process.send_signal(sig)
    process.communicate(timeout=60)
    assert process.returncode == -sig
    marker.unlink()
  # An ended command's pid is not signalled again (it may belong to another process now).
  process.send_signal(signal.SIGKILL)


def test_a_command_past_its_timeout_is_killed():
  began = time.monotonic()
  with pytest.raises(subprocess.TimeoutExpired):
    run_code("import time; time.sleep(60)", timeout=1)
  assert time.monotonic() - began < 30
