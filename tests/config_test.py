"""Flags and flagfiles resolve to the paper's settings; bad values fail early with clear messages."""

import glob
import os

import pytest
from absl import flags
from absl.flags import argparse_flags  # pylint: disable=unused-import
from PIL import Image

from age_tf import config as config_lib
from age_tf.errors import UserError

from conftest import ROOT, run_module

FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "flags", "*.cfg")))


def parse_flagfile(path, *extra):
  """Parses a flagfile with absl into a fresh FlagValues holding age_tf's flags."""
  values = flags.FlagValues()
  for name in config_lib.FLAG_NAMES:
    values[name] = flags.FLAGS[name]  # the same flag definitions
  values(["prog", f"--flagfile={path}", *extra])
  result = {name: values[name].value for name in config_lib.FLAG_NAMES}
  for name in config_lib.FLAG_NAMES:  # leave the shared Flag objects as we found them
    flags.FLAGS[name].unparse()
  return result


def test_there_is_a_flagfile_per_paper_experiment():
  names = {os.path.basename(p) for p in FLAGFILES}
  for experiment in ("mnist", "cifar10", "svhn", "celeba", "tiny_imagenet", "digits"):
    assert f"age_{experiment}.cfg" in names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_every_flagfile_parses_and_resolves(path, tmp_path):
  values = parse_flagfile(path)
  if values["dataset"].startswith("folder:"):  # point it at a real folder of images
    for i in range(80):  # enough for a batch of 64 after the 5% hold-out
      Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    values["dataset"] = f"folder:{tmp_path}"
  config = config_lib.resolve(values)
  assert config.train_steps > 0 and config.method == "age"


@pytest.mark.parametrize("dataset,latent,steps,generator_steps,decay,size", [
    ("cifar10", 128, 150 * (50000 // 64), 2, 40, 32),
    ("celeba", 64, 5 * (162770 // 64), 3, 5, 64),
    ("mnist", 10, 50 * (60000 // 64), 2, 20, 32),
    ("svhn", 64, 50 * (73257 // 64), 2, 20, 32),
])
def test_paper_defaults_per_dataset(dataset, latent, steps, generator_steps, decay, size):
  config = config_lib.resolve({"dataset": dataset})
  assert config.latent_dim == latent and config.train_steps == steps
  assert config.generator_steps == generator_steps and config.lr_decay_epochs == decay
  assert config.image_size == size
  assert (config.learning_rate, config.beta1, config.beta2) == (2e-4, 0.5, 0.999)
  assert config.adam_epsilon == 1e-8 and config.batch_size == 64
  assert (config.x_recon_weight, config.z_recon_weight) == (10.0, 1000.0)
  assert (config.x_recon_loss, config.z_recon_loss, config.kl_reduction) == ("l1", "cos", "mean")


def test_flagfile_matches_the_defaults_it_documents():
  from_file = config_lib.resolve(parse_flagfile(os.path.join(ROOT, "flags", "age_cifar10.cfg")))
  default = config_lib.resolve({"dataset": "cifar10", "model_dir": from_file.model_dir})
  assert from_file == default


def test_command_line_overrides_flagfile():
  values = parse_flagfile(os.path.join(ROOT, "flags", "age_cifar10.cfg"), "--latent_dim=32",
                          "--train_steps=7")
  config = config_lib.resolve(values)
  assert config.latent_dim == 32 and config.train_steps == 7


@pytest.mark.parametrize("values,message", [
    ({"method": "vae"}, "valid methods: age"),
    ({"dataset": "imagenet"}, "valid datasets: mnist, cifar10, svhn, celeba, digits, folder:PATH"),
    ({"image_size": 48}, "image_size=48"),
    ({"batch_size": 4096}, "larger than the 1497 training images"),
    ({"batch_size": 0}, "--batch_size=0 must be a positive"),
    ({"x_recon_weight": -1.0}, "--x_recon_weight=-1.0 must not be negative"),
    ({"lr_decay_factor": 2.0}, "lr_decay_factor"),
    ({"train_steps": -5}, "--train_steps=-5 must be positive"),
    ({"channels": 3}, "--channels is for folder"),
    ({"kl_estimator": "knn", "batch_size": 1}, "at least 2"),
])
def test_bad_values_are_refused_with_a_clear_message(values, message):
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.resolve(values)


def test_cli_refuses_unknown_method_with_one_line_and_no_traceback(tmp_path):
  result = run_module("age_tf.train", "--method=vae", f"--model_dir={tmp_path}", timeout=120)
  assert result.returncode == 2
  assert "error: Unknown --method='vae'; valid methods: age." in result.stderr
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # nothing was written
