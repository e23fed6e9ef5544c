"""`pip install .` and `pip install -e .` into a new virtualenv: the commands run, from another directory, on the installed package.

Each test copies what pip builds from (pyproject.toml and the files it
names) into a temporary directory, so that setuptools' build/ and egg-info
land there, never in the checkout, and installs that copy into a new
virtualenv with `--no-build-isolation --no-index`: pip downloads nothing.
The pinned requirements are already there: the new virtualenv sees this
interpreter's site-packages through a .pth file (what `venv
--system-site-packages` would do, but for the virtualenv this test runs in,
not the base interpreter behind it), after its own site-packages, so the
age_tf it imports is the one pip installed. The commands then run with the
new virtualenv's bin/ first on PATH, no PYTHONPATH, from a directory that
holds no age_tf.
"""

import os
import re
import shutil
import subprocess
import sys
import time

import pytest

# The source tree, or a Bazel runfiles tree (it holds the files below).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# What `pip install .` reads: pyproject.toml, the requirements it takes its
# dependencies from, the readme it names, and the package. A git checkout is
# copied whole (its tracked files and the untracked ones git does not
# ignore), so that setuptools sees the same top-level directories as in
# `pip install .` there; a Bazel runfiles tree (no .git) holds only these.
SOURCES = ["pyproject.toml", "requirements.txt", "README.md", "age_tf"]

COMMANDS = {"age-tf-train": "train", "age-tf-evaluate": "evaluate",
            "age-tf-export": "export", "age-tf-classifier": "classifier"}

# Seconds of training in a few steps (tests/train_test.py's tiny networks).
TINY = ["--dataset=digits", "--train_steps=2", "--width=8", "--latent_dim=6",
        "--batch_size=16", "--steps_per_loop=2", "--noexport"]


# absl exits with status 1 after printing --help or --helpshort.
HELP_EXIT = 1


def normalized(requirement):
  """A requirement with its project name as metadata spells it (PEP 503: lower case, -)."""
  name, rest = re.match(r"([A-Za-z0-9._-]+)(.*)", requirement.strip()).groups()
  return re.sub(r"[-_.]+", "-", name).lower() + rest


def requirement_lines():
  with open(os.path.join(ROOT, "requirements.txt")) as f:
    return [normalized(line) for line in f if line.strip() and not line.lstrip().startswith("#")]


def parent_site_packages():
  """This interpreter's site-packages directories (never the source tree)."""
  return [p for p in sys.path
          if os.path.basename(p) in ("site-packages", "dist-packages") and os.path.isdir(p)]


class Venv:
  """A new virtualenv that sees this interpreter's packages after its own."""

  def __init__(self, path):
    self.path = str(path)
    began = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", self.path], check=True,
                   capture_output=True, text=True, timeout=300)
    self.seconds = time.monotonic() - began
    import age_tf  # pylint: disable=g-import-not-at-top
    self.version = age_tf.__version__  # what pip must install
    self.bin = os.path.join(self.path, "bin")
    self.python = os.path.join(self.bin, "python")
    self.site_packages = self.run_python(
        "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip()
    parents = parent_site_packages()
    assert parents, f"no site-packages on this interpreter's sys.path: {sys.path}"
    # Plain paths: appended to sys.path after the virtualenv's own site-packages.
    with open(os.path.join(self.site_packages, "age_tf_test_parent.pth"), "w") as f:
      f.write("".join(p + "\n" for p in parents))
    self.env = {k: v for k, v in os.environ.items()
                if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH")}
    self.env.update(VIRTUAL_ENV=self.path, PATH=os.pathsep.join([self.bin, os.environ["PATH"]]),
                    TF_CPP_MIN_LOG_LEVEL="2", PYTHONNOUSERSITE="1")

  def run(self, *command, cwd, timeout=600):
    return subprocess.run(list(command), cwd=str(cwd), env=self.env, capture_output=True,
                          text=True, timeout=timeout)

  def run_python(self, code, cwd="/"):
    return subprocess.run([self.python, "-c", code], cwd=str(cwd), capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})

  def pip_install(self, *args, cwd):
    """pip install with nothing downloaded; returns (seconds, output).

    The build runs in this environment (--no-build-isolation), which must
    hold pyproject.toml's build requirements (--check-build-dependencies);
    --no-index: pip can download nothing, so every requirement must already
    be satisfied.
    """
    began = time.monotonic()
    env = dict(self.env, PIP_CONFIG_FILE=os.devnull)  # no machine-wide pip settings
    result = subprocess.run(
        [self.python, "-m", "pip", "install", "--no-build-isolation", "--check-build-dependencies",
         "--no-index", "--disable-pip-version-check", *args],
        cwd=str(cwd), env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - began
    output = result.stdout + result.stderr
    print(f"pip install {' '.join(args)}: exit {result.returncode} in {seconds:.1f} s "
          f"(venv created in {self.seconds:.1f} s)")
    assert result.returncode == 0, f"pip install {' '.join(args)} failed:\n{output[-6000:]}"
    assert "Downloading" not in output, output[-6000:]
    installed = [line for line in output.splitlines() if line.startswith("Successfully installed")]
    assert installed == [f"Successfully installed age-tf-{self.version}"], output[-6000:]
    return seconds, output


def checkout_files():
  """The checkout's files as `git ls-files` lists them (tracked, or new and not ignored), or None."""
  if not os.path.isdir(os.path.join(ROOT, ".git")) or not shutil.which("git"):
    return None
  listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
  if listed.returncode != 0:
    return None
  return [name for name in listed.stdout.split("\0")
          if name and os.path.isfile(os.path.join(ROOT, name))]  # not deleted in the work tree


def copy_sources(dest):
  """The files pip builds from, copied (Bazel's runfiles are symlinks: copied as files)."""
  os.makedirs(dest)
  files = checkout_files()
  if files is not None:
    for name in files:
      os.makedirs(os.path.join(dest, os.path.dirname(name)), exist_ok=True)
      shutil.copy(os.path.join(ROOT, name), os.path.join(dest, name))
    missing = [name for name in SOURCES if not os.path.exists(os.path.join(dest, name))]
    assert not missing, f"{missing} neither tracked nor new in the checkout"
    return str(dest)
  for name in SOURCES:
    source = os.path.join(ROOT, name)
    assert os.path.exists(source), f"{source} is missing (pyproject.toml needs it)"
    if os.path.isdir(source):
      shutil.copytree(source, os.path.join(dest, name),
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    else:
      shutil.copy(source, dest)
  return str(dest)


def where_age_tf(venv, cwd):
  result = venv.run(venv.python, "-c", "import age_tf; print(age_tf.__file__)", cwd=cwd)
  assert result.returncode == 0, result.stderr[-3000:]
  return os.path.realpath(result.stdout.strip())


def under(path, directory):
  return os.path.commonpath([path, os.path.realpath(directory)]) == os.path.realpath(directory)


def test_pip_install_gives_the_package_its_requirements_and_commands(tmp_path):
  top_level_before = sorted(os.listdir(ROOT))
  venv = Venv(tmp_path / "venv")
  elsewhere = tmp_path / "elsewhere"  # the commands' working directory: no age_tf there
  elsewhere.mkdir()
  # Before the install, the new virtualenv has no age_tf: the parent's
  # site-packages (the .pth) hands it the requirements, never the checkout.
  before = venv.run(venv.python, "-c", "import age_tf", cwd=elsewhere)
  assert before.returncode != 0 and "No module named 'age_tf'" in before.stderr, before.stderr

  source = copy_sources(tmp_path / "source")
  venv.pip_install(source, cwd=tmp_path)
  assert sorted(os.listdir(ROOT)) == top_level_before, "the install wrote into the checkout"

  # The package, from the new virtualenv's site-packages.
  location = where_age_tf(venv, elsewhere)
  assert under(location, venv.site_packages), location
  assert not under(location, ROOT) and not under(location, source), location

  # Its metadata: the version of age_tf/__init__.py, requirements.txt's pins,
  # and one console script per entry point.
  check = venv.run(venv.python, "-c", """if True:
      import importlib.metadata as m
      print(m.version("age-tf"))
      print("\\n".join(m.requires("age-tf")))
      for ep in m.entry_points(group="console_scripts"):
        if ep.dist.name == "age-tf":
          ep.load()  # age_tf.cli's function exists
          print(f"script {ep.name} {ep.value}")
      """, cwd=elsewhere)
  assert check.returncode == 0, check.stderr[-3000:]
  lines = check.stdout.splitlines()
  assert lines[0] == venv.version
  assert sorted(normalized(line) for line in lines[1:] if not line.startswith("script ")) == sorted(
      requirement_lines())
  scripts = sorted(line.split()[1:] for line in lines if line.startswith("script "))
  assert scripts == sorted([name, f"age_tf.cli:{function}"] for name, function in COMMANDS.items())
  for name in COMMANDS:
    assert shutil.which(name, path=venv.env["PATH"]) == os.path.join(venv.bin, name), name

  # The console script trains a few steps, from another directory.
  model_dir = tmp_path / "run"
  began = time.monotonic()
  train = venv.run("age-tf-train", *TINY, f"--model_dir={model_dir}", cwd=elsewhere)
  print(f"age-tf-train: exit {train.returncode} in {time.monotonic() - began:.1f} s")
  assert train.returncode == 0, train.stderr[-5000:]
  assert (model_dir / "checkpoints" / "ckpt-2.index").is_file(), sorted(os.listdir(model_dir))
  assert (model_dir / "flags.json").is_file() and (model_dir / "samples.png").is_file()

  # python -m works from there too, on the installed module.
  helpshort = venv.run(venv.python, "-m", "age_tf.train", "--helpshort", cwd=elsewhere)
  assert helpshort.returncode == HELP_EXIT, helpshort.stderr[-3000:]
  assert "python -m age_tf.train" in helpshort.stdout, helpshort.stdout  # its docstring

  # age-tf-export runs age_tf/export.py as `python -m age_tf.export` does: its
  # own --version flag is listed under the installed file's path.
  export = venv.run("age-tf-export", "--helpshort", cwd=elsewhere)
  assert export.returncode == HELP_EXIT, export.stderr[-3000:]
  installed_export = os.path.join(venv.site_packages, "age_tf", "export.py")
  assert f"{installed_export}:\n  --version:" in export.stdout, export.stdout[-3000:]


def test_editable_install_imports_the_source_directory(tmp_path):
  venv = Venv(tmp_path / "venv")
  source = copy_sources(tmp_path / "source")
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  venv.pip_install("-e", source, cwd=tmp_path)

  location = where_age_tf(venv, elsewhere)
  assert under(location, source), location  # the copy pip installed, not ROOT
  # An edit of the source shows without reinstalling.
  with open(os.path.join(source, "age_tf", "__init__.py"), "a") as f:
    f.write('\nEDITED = "yes"\n')
  edited = venv.run(venv.python, "-c", "import age_tf; print(age_tf.EDITED)", cwd=elsewhere)
  assert edited.stdout.strip() == "yes", edited.stderr[-3000:]

  helpshort = venv.run("age-tf-train", "--helpshort", cwd=elsewhere)
  assert helpshort.returncode == HELP_EXIT, helpshort.stderr[-3000:]
  assert "python -m age_tf.train" in helpshort.stdout, helpshort.stdout  # its docstring
