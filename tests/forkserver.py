"""Runs the tests' `python -m age_tf.<command>` processes as forks of a Python that has imported TensorFlow.

A fresh interpreter spends about 5 CPU-seconds importing TensorFlow and
Keras before age_tf's code runs; the suite starts about a hundred commands.
Each pytest worker starts one server process (this file run as a script)
that imports them once and then, per request, forks a child that runs the
command as `python -m` does: `runpy` runs the module as `__main__` with
sys.argv, the working directory, the environment and sys.path as `python -m`
sets them, stdin from /dev/null, stdout and stderr to files, and the
interpreter's exit (non-daemon threads joined, atexit handlers run) before
the exit status. The child is a real process: signals, SIGKILL, its pid in
lock files and its own TensorFlow runtime (created after the fork; the server
runs no TensorFlow op) are as they are for `python -m`.

What differs from a fresh interpreter is what was fixed at import: the
server's environment when TensorFlow was imported (the worker's, with
OPENBLAS_NUM_THREADS=1 so that the server holds no thread when it forks).
Tests of import-time behaviour, installed commands and other interpreters
start real processes (`fresh=True` in conftest.run_module, install_test,
docs_test).

The client side (`Server`, `Process`) mirrors subprocess.run and Popen.
"""

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

PRELOADED = ("numpy", "tensorflow", "keras", "tensorflow_datasets", "sklearn.datasets",
             "PIL.Image", "absl.app", "absl.flags", "absl.logging")


# ------------------------------------------------------------------ server


def _child(request):
  """Runs the command in the forked child; never returns."""
  code = 1
  try:
    stdin = os.open(os.devnull, os.O_RDONLY)
    stdout = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    stderr = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
      os.dup2(source, target)
      os.close(source)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("niceness"):
      os.nice(request["niceness"])
    # sys.path as `python -m` / `python -c` make it: the working directory,
    # then PYTHONPATH, then the interpreter's own entries.
    python_path = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"] if request["mode"] == "-m" else ""] + python_path + [
        p for p in _BASE_PATH if p not in python_path]
    import runpy  # pylint: disable=g-import-not-at-top
    try:
      if request["mode"] == "-m":
        sys.argv = [request["target"], *request["args"]]
        runpy.run_module(request["target"], run_name="__main__", alter_sys=True)
      else:
        sys.argv = ["-c", *request["args"]]
        exec(compile(request["target"], "<string>", "exec"), {"__name__": "__main__"})  # pylint: disable=exec-used
      code = 0
    except SystemExit as stop:
      if stop.code is None or isinstance(stop.code, int):
        code = stop.code or 0
      else:
        print(stop.code, file=sys.stderr)
        code = 1
    except BaseException:  # pylint: disable=broad-except
      sys.excepthook(*sys.exc_info())
      code = 1
    # What the interpreter does at exit: join non-daemon threads, run atexit.
    threading._shutdown()  # pylint: disable=protected-access
    atexit._run_exitfuncs()  # pylint: disable=protected-access
  finally:
    for stream in (sys.stdout, sys.stderr):
      try:
        stream.flush()
      except Exception:  # pylint: disable=broad-except
        pass
    os._exit(code)  # pylint: disable=protected-access


def serve():
  """Reads one JSON request per line on stdin, answers one JSON line on stdout."""
  requests, replies = sys.stdin, sys.stdout
  status = {}  # pid -> returncode, or None while it runs
  cpu = {}  # pid -> CPU seconds (user + system) of the ended command

  def poll(pid):
    if status.get(pid) is None:
      done, wait_status, usage = os.wait4(pid, os.WNOHANG)
      if done:
        status[pid] = os.waitstatus_to_exitcode(wait_status)
        cpu[pid] = usage.ru_utime + usage.ru_stime
    return status[pid]

  for line in requests:
    request = json.loads(line)
    op = request["op"]
    if op == "spawn":
      replies.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(request)
      status[pid] = None
      reply = {"pid": pid}
    elif op == "poll":
      returncode = poll(request["pid"])
      reply = {"returncode": returncode, "cpu": cpu.get(request["pid"])}
    elif op == "signal":
      # Only a child not yet reaped is signalled: its pid cannot have been reused.
      if poll(request["pid"]) is None:
        os.kill(request["pid"], request["signal"])
      reply = {}
    else:
      reply = {"error": f"unknown op {op!r}"}
    replies.write(json.dumps(reply) + "\n")
    replies.flush()
  # The worker is gone: leave no command of its behind.
  for pid, returncode in status.items():
    if returncode is None:
      try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
      except OSError:
        pass


# ------------------------------------------------------------------ client


class Process:
  """A forked command, with the part of subprocess.Popen's interface the tests use."""

  def __init__(self, server, args, pid, stdout_path, stderr_path):
    self._server = server
    self.args = args
    self.pid = pid
    self.returncode = None
    self._paths = (stdout_path, stderr_path)

  def poll(self):
    if self.returncode is None:
      reply = self._server.request(op="poll", pid=self.pid)
      if reply["returncode"] is not None:
        self._server.children_cpu += reply["cpu"]
        self.returncode = reply["returncode"]
    return self.returncode

  def wait(self, timeout=None):
    deadline = None if timeout is None else time.monotonic() + timeout
    pause = 0.005
    while self.poll() is None:
      if deadline is not None and time.monotonic() > deadline:
        raise subprocess.TimeoutExpired(self.args, timeout)
      time.sleep(pause)
      pause = min(2 * pause, 0.1)
    return self.returncode

  def send_signal(self, sig):
    if self.returncode is None:
      self._server.request(op="signal", pid=self.pid, signal=int(sig))

  def kill(self):
    self.send_signal(signal.SIGKILL)

  def terminate(self):
    self.send_signal(signal.SIGTERM)

  def communicate(self, timeout=None):
    """Waits for the exit; returns (stdout, stderr) as text."""
    self.wait(timeout)
    outputs = []
    for path in self._paths:
      with open(path, encoding="utf-8", errors="replace") as f:
        outputs.append(f.read())
      os.remove(path)
    return tuple(outputs)


_SERVERS = []


def ended_commands_cpu():
  """CPU seconds of every command of this process's servers that has ended."""
  return sum(server.children_cpu for server in _SERVERS)


class Server:
  """One server process per test worker, started on first use."""

  def __init__(self, root):
    _SERVERS.append(self)
    self._root = root
    self._process = None
    self._lock = threading.Lock()
    self._outputs = tempfile.mkdtemp(prefix="age_tf_forkserver_")
    self._count = 0
    # CPU seconds of the commands that have ended: getrusage(RUSAGE_CHILDREN)
    # of the worker counts them only once the server itself has ended.
    self.children_cpu = 0.0

  def _start(self):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    self._log = os.path.join(self._outputs, "server.log")
    with open(self._log, "w") as log:
      self._process = subprocess.Popen([sys.executable, os.path.abspath(__file__)],
                                       cwd=self._root, env=env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, text=True)
    atexit.register(self._stop)

  def _stop(self):
    # The server ends when its input does, after killing any command still running.
    self._process.stdin.close()
    try:
      self._process.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self._process.kill()

  def request(self, **request):
    with self._lock:
      if self._process is None:
        self._start()
      self._process.stdin.write(json.dumps(request) + "\n")
      self._process.stdin.flush()
      line = self._process.stdout.readline()
    if not line:
      with open(self._log) as f:
        raise RuntimeError(f"the fork server died:\n{f.read()[-3000:]}")
    return json.loads(line)

  def start(self, mode, target, args, env, cwd, niceness=0):
    """Starts `python mode target args` (mode "-m" or "-c") as a fork; returns its Process."""
    self._count += 1
    paths = [os.path.join(self._outputs, f"{self._count}.{name}") for name in ("out", "err")]
    reply = self.request(op="spawn", mode=mode, target=target, args=list(args), env=dict(env),
                         cwd=cwd, niceness=niceness, stdout=paths[0], stderr=paths[1])
    return Process(self, [sys.executable, mode, target, *args], reply["pid"], *paths)

  def run(self, mode, target, args, env, cwd, timeout=None):
    """As subprocess.run(capture_output=True, text=True): a CompletedProcess, or TimeoutExpired."""
    process = self.start(mode, target, args, env, cwd)
    try:
      stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.communicate()
      raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


if __name__ == "__main__":
  import importlib  # pylint: disable=g-import-not-at-top
  for name in PRELOADED:
    importlib.import_module(name)
  # The interpreter's own entries: without this file's directory and PYTHONPATH.
  _SERVER_PYTHON_PATH = os.environ.get("PYTHONPATH", "").split(os.pathsep)
  _BASE_PATH = [p for p in sys.path[1:] if p not in _SERVER_PYTHON_PATH]
  serve()
