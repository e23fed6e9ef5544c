"""One training run per model_dir: a lock file naming its holder, renewed by a heartbeat.

The holder's record (MODEL_DIR/train.lock, JSON) names its process, host,
start time and command, and a heartbeat time it renews every
RENEW_SECONDS. Another trainer on the same directory refuses to start,
naming the holder. A lock whose holder is gone never blocks a rerun:

* on the holder's own host, the holder is gone when its process no longer
  exists (or the process id now belongs to a process started at another
  time);
* from another host (a shared filesystem), when its heartbeat is older than
  LEASE_SECONDS: a holder that cannot renew for that long (a machine that
  lost power, a partitioned host) is taken for dead.

Taking over a stale lock renames it away first, an atomic step only one
trainer can win. Under a multi-worker strategy the chief holds the lock for
the cluster. Readers (evaluate, export) take no lock.
"""

import datetime
import json
import os
import socket
import sys
import threading
import time
import uuid

from absl import logging

from age_tf.errors import UserError

LOCK_FILE = "train.lock"
RENEW_SECONDS = 30.0
LEASE_SECONDS = 300.0


def _process_start(pid):
  """The process's start time in clock ticks since boot (Linux), or None where unknown."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return int(f.read().rsplit(")", 1)[1].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _process_exists(pid):
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # another user's process
    return True
  return True


def holder_is_alive(record, now=None, host=None):
  """Whether the process a lock record names still holds it (the rule in the module doc)."""
  host = host or socket.gethostname()
  if record.get("host") == host:
    pid = record.get("pid")
    if not isinstance(pid, int) or not _process_exists(pid):
      return False
    start = record.get("process_start")
    return start is None or _process_start(pid) in (None, start)
  now = time.time() if now is None else now
  return now - float(record.get("heartbeat", 0.0)) < LEASE_SECONDS


def describe(record):
  started = datetime.datetime.fromtimestamp(float(record.get("started", 0.0)),
                                            datetime.timezone.utc)
  return (f"pid {record.get('pid')} on host {record.get('host')}, started "
          f"{started:%Y-%m-%d %H:%M:%S} UTC: {record.get('command', '?')}")


class RunLock:
  """Holds MODEL_DIR/train.lock while in use (a context manager); see the module doc."""

  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.path = os.path.join(model_dir, LOCK_FILE)
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._thread = None
    self._created_dir = False

  def _record(self):
    now = time.time()
    return {"pid": os.getpid(), "host": socket.gethostname(), "token": self.token,
            "process_start": _process_start(os.getpid()),
            "started": getattr(self, "_started", now), "heartbeat": now,
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv)}

  def _read(self):
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return None

  def acquire(self):
    """Takes the lock, or raises UserError naming the live holder."""
    try:
      return self._acquire()
    except OSError as e:
      self.release()
      raise UserError(f"Could not write {self.path}: {e.strerror or e}. Fix the directory's "
                      "permissions or use another --model_dir.") from None

  def _acquire(self):
    if "://" in self.model_dir:  # gs://, s3://...: no exclusive create there
      logging.warning("--model_dir=%s is not a local path: it is not locked against a second "
                      "trainer.", self.model_dir)
      return self
    if not os.path.isdir(self.model_dir):
      os.makedirs(self.model_dir)
      self._created_dir = True
    self._started = time.time()
    for _ in range(50):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        record = self._read()
        if record is None:  # being written by its holder right now, or emptied by a crash
          age = time.time() - _mtime(self.path)
          if age < 5.0:
            time.sleep(0.1)
            continue
          record = {}
        if record and holder_is_alive(record):
          self.release()
          raise UserError(
              f"--model_dir={self.model_dir} is in use by another training run ("
              f"{describe(record)}). Wait for it to finish or stop it, or use another "
              f"--model_dir; a lock whose process is gone is taken over by itself.")
        self._take_over_stale(record)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self._record(), f)
      self._thread = threading.Thread(target=self._renew, name="run-lock-heartbeat",
                                      daemon=True)
      self._thread.start()
      return self
    self.release()
    raise UserError(f"Could not take {self.path}: other trainers keep taking it; start one "
                    "trainer per --model_dir.")

  def _take_over_stale(self, record):
    aside = f"{self.path}.stale-{self.token}"
    try:
      os.rename(self.path, aside)  # atomic: one taker wins
    except FileNotFoundError:
      return  # another trainer took it over first; try again
    os.remove(aside)
    if record:
      logging.warning("Took over the lock of a training run that is gone (%s).",
                      describe(record))

  def _renew(self):
    while not self._stop.wait(RENEW_SECONDS):
      record = self._read()
      if not record or record.get("token") != self.token:
        logging.warning("%s no longer names this run (it was taken over: this process was "
                        "taken for dead).", self.path)
        return
      tmp = f"{self.path}.tmp-{self.token}"
      try:
        with open(tmp, "w") as f:
          json.dump(self._record(), f)
        os.replace(tmp, self.path)
      except OSError as e:
        logging.warning("Could not renew %s: %s", self.path, e)

  def release(self):
    """Stops the heartbeat and removes the lock if this run still holds it."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
      self._thread = None
      record = self._read()
      if record and record.get("token") == self.token:
        try:
          os.remove(self.path)
        except OSError:
          pass
    if self._created_dir:
      try:
        os.rmdir(self.model_dir)  # only if this run wrote nothing else
      except OSError:
        pass
      self._created_dir = False

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _mtime(path):
  try:
    return os.path.getmtime(path)
  except OSError:
    return 0.0
