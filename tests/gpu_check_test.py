"""benchmarks/gpu_check.sh refuses, in one line and within seconds, a machine where no NVIDIA GPU is visible.

Each case runs the script as a user would (bash, from another directory)
and expects exit status 2, nothing on stdout and exactly one line on stderr,
"error: ..." naming the problem and the fix: nvidia-smi not on PATH (PATH
stripped of every directory that has one), an nvidia-smi that fails or lists
no GPU, CUDA_VISIBLE_DEVICES hiding every GPU (all four before TensorFlow is
imported), and TensorFlow listing no GPU (this machine's, behind a stand-in
nvidia-smi that lists one).
"""

import importlib.metadata
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_check.sh")
BASH = shutil.which("bash") or "/bin/bash"


def path_without_nvidia_smi():
  return os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep)
                         if d and not os.path.exists(os.path.join(d, "nvidia-smi")))


def fake_nvidia_smi(directory, script):
  """A stand-in nvidia-smi in `directory`; returns the PATH that finds it first."""
  directory.mkdir(exist_ok=True)
  path = directory / "nvidia-smi"
  path.write_text("#!/bin/sh\n" + script)
  path.chmod(0o755)
  return os.pathsep.join([str(directory), path_without_nvidia_smi()])


def refuse(tmp_path, path, *args, seconds, **env):
  """Runs the script; asserts the one-line refusal with status 2 in `seconds`; returns it."""
  full_env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES",)}
  full_env.update(PATH=path, PYTHON=sys.executable, **env)
  began = time.monotonic()
  result = subprocess.run([BASH, SCRIPT, *args], cwd=str(tmp_path), env=full_env,
                          capture_output=True, text=True, timeout=120)
  elapsed = time.monotonic() - began
  lines = result.stderr.splitlines()
  assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
  assert result.stdout == "", result.stdout[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  assert elapsed < seconds, f"took {elapsed:.1f} s: {lines[0]}"
  return lines[0]


def test_no_nvidia_smi_on_path(tmp_path):
  line = refuse(tmp_path, path_without_nvidia_smi(), seconds=5)
  assert "no NVIDIA GPU visible: nvidia-smi is not on PATH" in line
  assert "driver" in line  # the fix


def test_nothing_on_path_at_all(tmp_path):
  # Builtins only until a GPU is known: not even dirname or date is needed.
  line = refuse(tmp_path, str(tmp_path / "empty"), seconds=5)
  assert "nvidia-smi is not on PATH" in line


def test_failing_nvidia_smi(tmp_path):
  path = fake_nvidia_smi(tmp_path / "bin", "echo 'NVIDIA-SMI has failed because it couldn'\"'\"'t "
                         "communicate with the NVIDIA driver.'\nexit 9\n")
  line = refuse(tmp_path, path, seconds=5)
  assert "nvidia-smi failed (exit 9: NVIDIA-SMI has failed" in line
  assert "Fix the NVIDIA driver" in line


def test_nvidia_smi_listing_no_gpu(tmp_path):
  line = refuse(tmp_path, fake_nvidia_smi(tmp_path / "bin", "exit 0\n"), seconds=5)
  assert "nvidia-smi lists no GPU" in line


@pytest.mark.parametrize("value", ["", "-1"])
def test_cuda_visible_devices_hiding_every_gpu(tmp_path, value):
  path = fake_nvidia_smi(tmp_path / "bin", "echo 'NVIDIA H200, 143771 MiB, 570.86.15'\n")
  line = refuse(tmp_path, path, seconds=5, CUDA_VISIBLE_DEVICES=value)
  assert f"CUDA_VISIBLE_DEVICES='{value}' hides every GPU" in line and "Unset it" in line


def test_tensorflow_listing_no_gpu(tmp_path):
  if shutil.which("nvidia-smi"):
    pytest.skip("a real nvidia-smi is on PATH: TensorFlow may see a GPU here")
  version = importlib.metadata.version("tensorflow")
  path = fake_nvidia_smi(tmp_path / "bin", "echo 'NVIDIA H200, 143771 MiB, 570.86.15'\n")
  # The script imports TensorFlow once (about 5 s on a 2-core CPU).
  line = refuse(tmp_path, path, seconds=60)
  assert line.startswith("error: no NVIDIA GPU visible to TensorFlow: ")
  assert f"nvidia-smi lists 1 GPU(s) but TensorFlow {version} lists none" in line
  assert f"tensorflow[and-cuda]=={version}" in line  # the fix


def test_bad_option_is_refused_in_one_line(tmp_path):
  line = refuse(tmp_path, path_without_nvidia_smi(), "--budget=soon", seconds=5)
  assert "take positive integers, not 'soon'" in line
  line = refuse(tmp_path, path_without_nvidia_smi(), "--parts=learning,speed", seconds=5)
  assert "unknown part 'speed'" in line


def test_help_describes_the_options(tmp_path):
  result = subprocess.run([BASH, SCRIPT, "--help"], cwd=str(tmp_path), capture_output=True,
                          text=True, timeout=30, env=dict(os.environ, PATH=path_without_nvidia_smi()))
  assert result.returncode == 0, result.stderr
  for option in ("--budget=SECONDS", "--parts=LIST", "--work_dir=DIR", "--allow_cpu"):
    assert option in result.stdout
