"""Atomic file writes (local paths and any filesystem tf.io.gfile supports)."""

import os
import uuid

import tensorflow as tf


def atomic_write(path, data):
  """Writes bytes or str to `path` via a temporary file and a rename.

  A reader (or a crash) never sees a partially written file: it finds the
  old content or the new.
  """
  tmp = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    with tf.io.gfile.GFile(tmp, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.remove(tmp)
    raise
