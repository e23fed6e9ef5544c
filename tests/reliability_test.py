"""Crashes, signals, NaNs, bad input and a full disk: what a run keeps and what it says."""

import glob
import json
import os
import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import read_events, run_module, start_module

from age_tf import checkpointing

# A small, fast digits model: every run here trains seconds, not minutes. Its
# served statistics (training's figures, evaluate) come from 128 images: the
# statistics pass is not under test here (inference_statistics_test).
SMALL = ("--dataset=digits", "--width=4", "--batch_size=16", "--bn_statistics_images=128")
# Evaluations here read runs, they do not measure them: recon only, with the digits
# classifier of evaluate_test's settings (trained once into the suite's cache).
EVALUATE = ("--metrics=recon", "--classifier_epochs=3")


def train(model_dir, *args, timeout=600):
  return run_module("age_tf.train", *SMALL, f"--model_dir={model_dir}", *args, timeout=timeout)


def start_training(model_dir, *args, niceness=0):
  return start_module("age_tf.train", *SMALL, f"--model_dir={model_dir}", *args,
                      niceness=niceness)


def wait_for(predicate, process, timeout=300, poll=0.05):
  """Polls until predicate() holds; fails if the process ends or time runs out first."""
  deadline = time.monotonic() + timeout
  while not predicate():
    if process.poll() is not None:
      _, err = process.communicate()
      pytest.fail(f"training ended (rc {process.returncode}) before the awaited state:\n"
                  f"{err[-3000:]}")
    if time.monotonic() > deadline:
      process.kill()
      pytest.fail("timed out waiting for the training process")
    time.sleep(poll)


def checkpoint_steps(model_dir):
  return sorted(int(p.rsplit("-", 1)[1].split(".")[0])
                for p in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.index")))


def load_variables(model_dir):
  config, model, step = checkpointing.load_model(model_dir)
  return step, {v.path: v.numpy() for v in model.variables}


def assert_one_line_error(result, *fragments, returncode=2):
  assert result.returncode == returncode, (result.returncode, result.stderr[-3000:])
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines()
            if line.startswith(("error:", "FATAL Flags parsing error"))]
  assert len(errors) == 1, result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in errors[0], errors[0]


# ---------------------------------------------------------------- crashes and signals


def test_sigkill_at_random_points_then_the_same_command_completes(tmp_path):
  """Killed mid-step, mid-checkpoint or mid-export three times; the rerun finishes the job."""
  model_dir = str(tmp_path / "run")
  args = ("--train_steps=40", "--checkpoint_every=2", "--steps_per_loop=2", "--log_every=2",
          "--image_every=4")
  seed = int(os.environ.get("AGE_TF_KILL_SEED", time.time_ns() % 10000))
  rng = random.Random(seed)
  kills = []
  for _ in range(3):
    process = start_training(model_dir, *args)
    # Once the run writes (flags.json is its first file), kill it at a random moment.
    wait_for(lambda: os.path.exists(os.path.join(model_dir, "flags.json")), process)
    time.sleep(rng.uniform(0.0, 4.0))
    process.kill()
    process.communicate()
    kills.append(checkpoint_steps(model_dir)[-1:] or [0])
  print(f"kill seed {seed}; latest checkpoint after each kill: {kills}")
  result = train(model_dir, *args)
  assert result.returncode == 0, result.stderr[-5000:]
  assert checkpoint_steps(model_dir)[-1] == 40
  assert not glob.glob(os.path.join(model_dir, "checkpoints", "*_temp*"))
  step, variables = load_variables(model_dir)
  assert step == 40 and all(np.all(np.isfinite(v)) for v in variables.values())
  versions = [d for d in os.listdir(os.path.join(model_dir, "export")) if d.isdigit()]
  assert versions and all(os.path.exists(os.path.join(model_dir, "export", v, "saved_model.pb"))
                          for v in versions)
  evaluated = run_module("age_tf.evaluate", f"--model_dir={model_dir}", *EVALUATE)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  metrics = json.load(open(os.path.join(model_dir, "eval", "40", "metrics.json")))
  assert np.isfinite(metrics["metrics"]["recon/pixel_mse"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_ends_the_step_writes_a_checkpoint_and_exits(sig, tmp_path):
  model_dir = str(tmp_path / "run")
  # Compiled calls of 50 steps (to each checkpoint): the signal has to stop one from inside.
  every = "100000"
  process = start_training(model_dir, f"--train_steps={every}", f"--steps_per_loop={every}",
                           f"--log_every={every}", "--checkpoint_every=50",
                           f"--image_every={every}", "--noexport")
  wait_for(lambda: checkpoint_steps(model_dir), process)  # step 50: training is running
  time.sleep(1)
  process.send_signal(sig)
  _, err = process.communicate(timeout=120)
  assert process.returncode == 128 + sig, err[-3000:]
  last = checkpoint_steps(model_dir)[-1]
  assert 50 <= last < 100000
  assert (f"Stopped by {signal.Signals(sig).name} after step {last} of 100000; "
          f"checkpoint {model_dir}/checkpoints/ckpt-{last} written") in err
  assert "Traceback" not in err
  resumed = train(model_dir, f"--train_steps={last + 2}", "--noexport")
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resuming at step {last}" in resumed.stderr


@pytest.mark.parametrize("method", ["age", "gali4"])
def test_deterministic_resume_ends_with_the_same_weights_to_the_bit(method, tmp_path):
  """2N steps in one go == N steps, SIGKILL, resume to 2N (--deterministic, CPU)."""
  args = (f"--method={method}", "--deterministic", "--train_steps=60", "--checkpoint_every=20",
          "--log_every=20", "--noexport")
  straight = str(tmp_path / "straight")
  result = train(straight, *args)
  assert result.returncode == 0, result.stderr[-3000:]

  resumed = str(tmp_path / "resumed")
  process = start_training(resumed, *args)
  latest = lambda: tf.train.latest_checkpoint(os.path.join(resumed, "checkpoints"))
  wait_for(latest, process, poll=0.02)  # the checkpoint state file names ckpt-20
  process.kill()
  process.communicate()
  killed_at = int(latest().rsplit("-", 1)[1])
  result = train(resumed, *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert killed_at < 60 and f"resuming at step {killed_at}" in result.stderr

  step_a, weights_a = load_variables(straight)
  step_b, weights_b = load_variables(resumed)
  assert step_a == step_b == 60 and weights_a.keys() == weights_b.keys()
  differ = [k for k in weights_a if not np.array_equal(weights_a[k], weights_b[k])]
  assert not differ, f"{len(differ)} of {len(weights_a)} variables differ, e.g. {differ[:3]}"


# ---------------------------------------------------------------- NaN and Inf


def test_nan_stops_training_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  model_dir = str(tmp_path / "run")
  result = train(model_dir, "--train_steps=30", "--checkpoint_every=10", "--log_every=10",
                 "--debug_nan_at_step=17", "--noexport")
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert "Step 17: encoder/loss = nan" in result.stderr
  assert f"the last good checkpoint, {model_dir}/checkpoints/ckpt-10, is kept" in result.stderr
  assert checkpoint_steps(model_dir) == [10]
  step, variables = load_variables(model_dir)
  assert step == 10 and all(np.all(np.isfinite(v)) for v in variables.values())


# Both methods and both replica counts, in the two cheap pairings: tracing
# GALI-4's step for 2 replicas alone takes over a minute of CPU here.
# (distributed_test checks GALI-4's replicated step against one device's.)
@pytest.mark.parametrize("method,replicas", [("age", 2), ("gali4", 1)])
def test_nan_skip_leaves_the_update_out_counts_it_and_trains_on(method, replicas, tmp_path):
  model_dir = str(tmp_path / "run")
  result = train(model_dir, f"--method={method}", f"--num_cpu_replicas={replicas}",
                 "--train_steps=20", "--log_every=10", "--debug_nan_at_step=7",
                 "--on_nan=skip", "--noexport")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Skipped 1 step(s) with non-finite losses up to step 10 (first: step 7" in result.stderr
  step, variables = load_variables(model_dir)
  # Weights, optimizer moments and BatchNorm statistics all stayed finite.
  assert step == 20 and all(np.all(np.isfinite(v)) for v in variables.values())
  skipped = {e.step: float(tf.make_ndarray(e.tensor_proto))
             for e in read_events(model_dir).Tensors("nan/skipped_steps")}
  assert skipped == {10: 1.0, 20: 1.0}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args,fragments", [
    (("--dataset=imagenet",), ("Unknown --dataset='imagenet'", "valid datasets: ", "digits")),
    (("--strategy=tpu",), ("Unknown --strategy='tpu'",
                           "valid strategies: auto, mirrored, multi_worker, one_device")),
    (("--method=wgan",), ("Unknown --method='wgan'", "valid methods: age, ali")),
])
def test_unknown_names_are_refused_listing_the_valid_ones(args, fragments, tmp_path):
  result = run_module("age_tf.train", *args, f"--model_dir={tmp_path}", timeout=120)
  assert_one_line_error(result, *fragments)


def test_a_folder_without_images_is_refused(tmp_path):
  (tmp_path / "empty" / "sub").mkdir(parents=True)
  (tmp_path / "empty" / "notes.txt").write_text("no images here")
  result = run_module("age_tf.train", f"--dataset=folder:{tmp_path / 'empty'}",
                      f"--model_dir={tmp_path / 'run'}", timeout=120)
  assert_one_line_error(result, "has no training images")


def _folder_of_mixed_sizes_with_a_corrupt_file(root):
  (root / "train").mkdir(parents=True)
  rng = np.random.default_rng(0)
  for i in range(12):
    size = (20, 24) if i % 2 else (40, 36)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(
        root / "train" / f"{i}.png")
  (root / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  return root


def test_a_corrupt_image_fails_the_run_naming_the_file(tmp_path):
  folder = _folder_of_mixed_sizes_with_a_corrupt_file(tmp_path / "images")
  result = run_module("age_tf.train", f"--dataset=folder:{folder}", "--width=4",
                      "--batch_size=4", "--train_steps=2", f"--model_dir={tmp_path / 'run'}",
                      timeout=300)
  assert_one_line_error(result, "1 file(s) cannot be read as images", "broken.png",
                        "--on_bad_image=skip")
  assert not os.path.exists(tmp_path / "run")


def test_corrupt_images_are_skipped_and_counted_and_mixed_sizes_resized(tmp_path):
  folder = _folder_of_mixed_sizes_with_a_corrupt_file(tmp_path / "images")
  result = run_module("age_tf.train", f"--dataset=folder:{folder}", "--width=4",
                      "--batch_size=4", "--train_steps=2", "--on_bad_image=skip", "--noexport",
                      f"--model_dir={tmp_path / 'run'}", timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "left out 1 of 13 file(s) that cannot be read as images" in result.stderr
  resized = [l for l in result.stderr.splitlines() if "are resized to 32x32" in l]
  assert len(resized) == 1 and "images of 2 size(s)" in resized[0], result.stderr[-3000:]
  assert "6 of 20x24" in resized[0] and "6 of 40x36" in resized[0]


@pytest.fixture(scope="module")
def one_step_run(tmp_path_factory):
  """A run with one checkpoint, at step 1 (copied by each test that reuses it)."""
  model_dir = str(tmp_path_factory.mktemp("one_step") / "run")
  result = train(model_dir, "--train_steps=1", "--noexport")
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir


@pytest.mark.parametrize("change", ["--method=gali4", "--latent_dim=5", "--image_size=64"])
def test_a_model_dir_of_another_model_is_refused(change, one_step_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(one_step_run, model_dir)
  result = train(model_dir, "--train_steps=2", "--noexport", change)
  flag = change.split("=")[0]
  assert_one_line_error(result, "holds checkpoints of a different model", f"{flag}=",
                        "Use a new --model_dir")
  assert checkpoint_steps(model_dir) == [1]


def test_a_malformed_flagfile_is_refused_naming_the_line(tmp_path):
  flagfile = tmp_path / "run.cfg"
  flagfile.write_text("# digits\n--train_steps=2\nmethod=age\n")
  result = run_module("age_tf.train", f"--flagfile={flagfile}", f"--model_dir={tmp_path}",
                      timeout=120)
  assert_one_line_error(result, f"--flagfile={flagfile}, line 3: 'method=age' is not a flag")
  # absl reads flagfiles before age_tf runs: its parsing errors exit with 1.
  result = run_module("age_tf.train", f"--flagfile={tmp_path / 'missing.cfg'}", timeout=120)
  assert_one_line_error(result, "missing.cfg", "No such file or directory", returncode=1)


# ---------------------------------------------------------------- unwritable and full disks


def _mount_tmpfs(path, options):
  path.mkdir(parents=True, exist_ok=True)
  result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
  if result.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'}); "
                "this needs root or CAP_SYS_ADMIN")


def _unmount(path):
  subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_a_read_only_model_dir_is_refused_before_training(tmp_path):
  disk = tmp_path / "ro"
  if os.geteuid() == 0:  # root writes through permissions: use a read-only filesystem
    _mount_tmpfs(disk, "size=1m,ro")
  else:
    disk.mkdir()
    disk.chmod(0o555)
  try:
    result = train(str(disk / "run"), "--train_steps=2", timeout=120)
    # The first file a run writes is its lock (train.lock), before flags.json.
    assert_one_line_error(result, "Could not write", str(disk / "run"), "--model_dir",
                          "Read-only file system" if os.geteuid() == 0 else "Permission denied")
  finally:
    if os.geteuid() == 0:
      _unmount(disk)


def test_a_full_disk_fails_clearly_and_the_previous_checkpoint_still_loads(tmp_path):
  disk = tmp_path / "disk"
  _mount_tmpfs(disk, "size=4m")
  try:
    model_dir = str(disk / "run")
    assert train(model_dir, "--train_steps=4", "--noexport").returncode == 0
    # Fill the disk but for a few kilobytes: flags.json fits, a checkpoint does not.
    stat = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
      f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 16 * 1024))
    result = train(model_dir, "--train_steps=8", "--checkpoint_every=2", "--noexport")
    assert_one_line_error(result, "Could not write", "No space left on device",
                          "the checkpoints already written are intact")
    step, variables = load_variables(model_dir)
    assert step == 4 and all(np.all(np.isfinite(v)) for v in variables.values())
  finally:
    _unmount(disk)


# ---------------------------------------------------------------- one run per model_dir


def lock_path(model_dir):
  return os.path.join(model_dir, "train.lock")


def test_a_second_trainer_on_the_same_model_dir_is_refused_and_the_first_finishes(tmp_path):
  model_dir = str(tmp_path / "run")
  first = start_training(model_dir, "--train_steps=60", "--checkpoint_every=10",
                         "--seed=1", "--noexport")
  wait_for(lambda: os.path.exists(os.path.join(model_dir, "flags.json")), first)
  began = time.monotonic()
  second = train(model_dir, "--train_steps=60", "--checkpoint_every=10", "--seed=2",
                 "--noexport")
  refused_after = time.monotonic() - began
  assert first.poll() is None, "the first trainer ended before the second was refused"
  assert_one_line_error(second, f"--model_dir={model_dir} is in use by another training run",
                        f"pid {first.pid} on host", "started", "train.py --dataset=digits")
  assert refused_after < 60, refused_after
  out, err = first.communicate(timeout=600)
  assert first.returncode == 0, err[-3000:]
  # One trajectory: the first run's seed, one event file, and its lock gone.
  assert json.load(open(os.path.join(model_dir, "flags.json")))["seed"] == 1
  assert len(os.listdir(os.path.join(model_dir, "train"))) == 1
  assert checkpoint_steps(model_dir)[-1] == 60
  assert not os.path.exists(lock_path(model_dir))


def test_the_lock_of_a_killed_trainer_does_not_block_the_rerun(tmp_path):
  model_dir = str(tmp_path / "run")
  args = ("--train_steps=30", "--checkpoint_every=5", "--noexport")
  process = start_training(model_dir, *args)
  wait_for(lambda: checkpoint_steps(model_dir), process)
  process.kill()
  process.communicate()
  assert json.load(open(lock_path(model_dir)))["pid"] == process.pid  # left behind
  result = train(model_dir, *args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Took over the lock of a training run that is gone" in result.stderr
  assert checkpoint_steps(model_dir)[-1] == 30 and not os.path.exists(lock_path(model_dir))


def test_a_lock_on_another_host_holds_until_its_lease_runs_out():
  from age_tf import run_lock
  now = time.time()
  record = {"pid": 1, "host": "another-host", "heartbeat": now - 10, "started": now - 100}
  assert run_lock.holder_is_alive(record, now=now, host="this-host")
  record["heartbeat"] = now - run_lock.LEASE_SECONDS - 1
  assert not run_lock.holder_is_alive(record, now=now, host="this-host")
  # On its own host a holder lives exactly as long as its process.
  mine = {"pid": os.getpid(), "host": "h", "heartbeat": 0.0,
          "process_start": run_lock._process_start(os.getpid())}
  assert run_lock.holder_is_alive(mine, now=now, host="h")
  assert not run_lock.holder_is_alive(dict(mine, process_start=-1), now=now, host="h")


# ---------------------------------------------------------------- damaged checkpoints


def _damage(path_prefix, how):
  """Damages the checkpoint at path_prefix (.../ckpt-N) the way `how` says."""
  data = glob.glob(path_prefix + ".data-*")[0]
  if how == "truncated":
    with open(data, "r+b") as f:
      f.truncate(os.path.getsize(data) // 2)
  elif how == "bit_flipped":
    with open(data, "r+b") as f:
      f.seek(os.path.getsize(data) // 2)
      chunk = f.read(16)
      f.seek(os.path.getsize(data) // 2)
      f.write(bytes(b ^ 0xFF for b in chunk))
  elif how == "index_deleted":
    os.remove(path_prefix + ".index")
  elif how == "shard_deleted":
    os.remove(data)


def _file_digests(directory):
  digests = {}
  for root, _, names in os.walk(directory):
    for name in names:
      with open(os.path.join(root, name), "rb") as f:
        digests[os.path.relpath(os.path.join(root, name), directory)] = hash(f.read())
  return digests


@pytest.fixture(scope="module")
def six_step_run(tmp_path_factory):
  """A run with checkpoints at steps 2, 4 and 6 (copied by each test that damages it)."""
  model_dir = str(tmp_path_factory.mktemp("six_steps") / "run")
  result = train(model_dir, "--train_steps=6", "--checkpoint_every=2", "--steps_per_loop=2",
                 "--noexport")
  assert result.returncode == 0, result.stderr[-3000:]
  assert checkpoint_steps(model_dir) == [2, 4, 6]
  return model_dir


@pytest.mark.parametrize("how", ["truncated", "bit_flipped", "index_deleted", "shard_deleted"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_training_resumes_from_the_previous(
    how, six_step_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(six_step_run, model_dir)
  checkpoints = os.path.join(model_dir, "checkpoints")
  _damage(os.path.join(checkpoints, "ckpt-6"), how)
  kept = sorted(os.listdir(checkpoints))
  # evaluate and export on it: one line naming it, exit 2.
  evaluated = run_module("age_tf.evaluate", f"--model_dir={model_dir}", *EVALUATE,
                         "--checkpoint=6")
  if how != "index_deleted":  # without its index ckpt-6 is no checkpoint at all
    assert_one_line_error(evaluated, "ckpt-6 does not restore", "damaged")
  exported = run_module("age_tf.export", f"--model_dir={model_dir}")
  assert_one_line_error(exported, "ckpt-6")
  result = train(model_dir, "--train_steps=8", "--checkpoint_every=2", "--steps_per_loop=2",
                 "--noexport")
  assert result.returncode == 0, result.stderr[-3000:]
  warning = [l for l in result.stderr.splitlines() if "does not restore" in l]
  assert len(warning) == 1 and "ckpt-6" in warning[0] and "Resuming from ckpt-4" in warning[0]
  assert "resuming at step 4" in result.stderr
  # The damaged files are kept aside, untouched; training went on from step 4 to 8.
  aside = sorted(os.listdir(os.path.join(checkpoints, "damaged")))
  assert aside == sorted(n for n in kept if n.startswith("ckpt-6."))
  assert checkpoint_steps(model_dir)[-1] == 8
  step, _ = load_variables(model_dir)
  assert step == 8


def test_when_no_checkpoint_restores_training_stops_with_one_line_and_moves_nothing(
    six_step_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(six_step_run, model_dir)
  for step in (2, 4, 6):
    _damage(os.path.join(model_dir, "checkpoints", f"ckpt-{step}"), "truncated")
  before = _file_digests(model_dir)
  result = train(model_dir, "--train_steps=8", "--checkpoint_every=2", "--noexport")
  assert_one_line_error(result, "No checkpoint in", "restores", "ckpt-6", "ckpt-4", "ckpt-2",
                        "Nothing was moved or deleted")
  assert _file_digests(model_dir) == before


def test_evaluate_reads_a_run_that_writes_a_checkpoint_every_step(tmp_path):
  model_dir = str(tmp_path / "run")
  process = start_training(model_dir, "--train_steps=100000", "--checkpoint_every=1",
                           "--keep_checkpoints=2", "--steps_per_loop=1", "--log_every=1000",
                           "--image_every=100000", "--noexport",
                           niceness=10)  # it writes a checkpoint per step, leaving CPU to the rest
  try:
    wait_for(lambda: checkpoint_steps(model_dir), process)
    for _ in range(2):
      evaluated = run_module("age_tf.evaluate", f"--model_dir={model_dir}", *EVALUATE)
      assert evaluated.returncode == 0, evaluated.stderr[-3000:]
      assert process.poll() is None  # it really ran while checkpoints were being written
    steps = [int(d) for d in os.listdir(os.path.join(model_dir, "eval")) if d.isdigit()]
    assert steps
    for step in steps:
      metrics = json.load(open(os.path.join(model_dir, "eval", str(step), "metrics.json")))
      assert np.isfinite(metrics["metrics"]["recon/pixel_mse"])
  finally:
    process.kill()
    process.communicate()


# ---------------------------------------------------------------- damaged settings


def test_a_damaged_flags_json_is_refused_in_one_line(six_step_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(six_step_run, model_dir)
  with open(os.path.join(model_dir, "flags.json"), "w") as f:
    f.write('{"method": "age", "dataset": "dig')
  assert_one_line_error(train(model_dir, "--train_steps=8"), "flags.json is damaged",
                        "move it aside")


def test_a_model_dir_of_another_age_tf_version_is_refused_naming_it(six_step_run, tmp_path):
  model_dir = str(tmp_path / "run")
  shutil.copytree(six_step_run, model_dir)
  path = os.path.join(model_dir, "flags.json")
  values = json.load(open(path))
  values.update(age_tf_version="9.0.0", new_setting=1)
  json.dump(values, open(path, "w"))
  assert_one_line_error(train(model_dir, "--train_steps=8"), "written by age_tf 9.0.0",
                        "new_setting", "use age_tf 9.0.0")
  # A setting an older version had and this one dropped still loads.
  values.pop("new_setting")
  values.update(age_tf_version="0.0.1", pt_features="authors")
  json.dump(values, open(path, "w"))
  assert checkpointing.saved_config(model_dir).method == "age"


@pytest.mark.parametrize("flag", ["--learning_rate=nan", "--beta1=inf", "--x_recon_weight=-inf"])
def test_non_finite_numbers_are_refused_at_start(flag, tmp_path):
  result = train(str(tmp_path / "run"), flag)
  assert_one_line_error(result, "must be a finite number", flag.split("=")[0])
  assert not os.path.exists(tmp_path / "run")
