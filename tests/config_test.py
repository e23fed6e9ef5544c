"""Flags and flagfiles resolve to the paper's settings; bad values fail early with clear messages."""

import glob
import json
import os

import pytest
from absl import flags
from absl.flags import argparse_flags  # pylint: disable=unused-import
from PIL import Image

from age_tf import config as config_lib
from age_tf.errors import UserError
from age_tf.methods import METHODS

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
  for method in ("ali", "alice", "gali4", "gali8", "gali_pt"):
    assert f"{method}_svhn.cfg" in names
  for method in ("ali", "alice", "gali4", "gali_mix", "gali_pt"):
    assert f"{method}_celeba.cfg" in names
  for method in METHODS:
    assert f"{method}_digits.cfg" in names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_every_flagfile_parses_and_resolves(path, tmp_path):
  values = parse_flagfile(path)
  if values["dataset"].startswith("folder:"):  # point it at a real folder of images
    for i in range(80):  # enough for a batch of 64 after the 5% hold-out
      Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    values["dataset"] = f"folder:{tmp_path}"
  if values["feature_model"] and values["feature_model"] != "inception":
    values["feature_model"] = str(tmp_path)  # a classifier the user trains first
  config = config_lib.resolve(values)
  assert config.train_steps > 0
  assert os.path.basename(path).startswith(config.method + "_")
  experiment = os.path.basename(path)[len(config.method) + 1:-len(".cfg")]
  assert experiment == config.dataset or config.dataset.startswith("folder:")


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfiles_hold_only_what_the_defaults_do_not_give(path, tmp_path):
  # One source of truth for the papers' settings: the methods' per-dataset
  # defaults. A flagfile names its experiment and what differs from them.
  with open(path) as f:
    lines = [l.strip() for l in f if l.strip().startswith("--")]
  folder = None
  if any(l.startswith("--dataset=folder:") for l in lines):
    folder = f"--dataset=folder:{_image_folder(tmp_path)}"

  def resolved(kept):
    values = parse_flagfile(os.devnull, *kept, *([folder] if folder else []))
    if "feature_model" in values and values["feature_model"]:
      values["feature_model"] = str(tmp_path)  # a path that exists
    return config_lib.resolve(values)

  full = resolved(lines)
  for line in lines:
    if line.startswith(("--method=", "--dataset=", "--feature_model=")):
      continue
    assert resolved([l for l in lines if l != line]) != full, (
        f"{os.path.basename(path)}: {line} restates the default; remove it")


def _image_folder(tmp_path):
  folder = tmp_path / "images"
  folder.mkdir()
  for i in range(80):  # enough for a batch of 64 after the 5% hold-out
    Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
  return folder


@pytest.mark.parametrize("method,dataset,batch,lr,epochs,d_steps,simultaneous", [
    ("ali", "svhn", 100, 2e-4, 300, 5, False),
    ("alice", "svhn", 100, 2e-4, 300, 5, False),
    ("gali8", "svhn", 100, 2e-4, 300, 5, False),
    ("gali4", "svhn", 100, 2e-4, 100, 1, True),
    ("ali", "celeba", 100, 1e-4, 100, 1, True),
    ("gali4", "celeba", 100, 4e-5, 100, 1, True),
    ("gali_mix", "celeba", 100, 4e-5, 100, 1, True),
])
def test_gali_schedules_follow_the_authors(method, dataset, batch, lr, epochs, d_steps,
                                           simultaneous):
  config = config_lib.resolve({"method": method, "dataset": dataset})
  assert (config.batch_size, config.learning_rate) == (batch, lr)
  assert (config.d_steps, config.simultaneous_updates) == (d_steps, simultaneous)
  assert (config.latent_dim, config.prior, config.lr_decay_epochs) == (256, "gaussian", 0)
  # An epoch is one pass over the images; a 5:1 step uses six batches of them.
  # The authors' SVHN scripts train on the extra split alone.
  assert config.svhn_split == ("extra" if dataset == "svhn" else "train")
  images = {"svhn": 531131, "celeba": 162770}[dataset]
  assert config.steps_per_epoch == images // (batch * (d_steps + (0 if simultaneous else 1)))
  assert config.train_steps == epochs * config.steps_per_epoch
  assert config.width == {"svhn": 32, "celeba": 64}[dataset]


def test_alice_weights_follow_the_authors():
  assert config_lib.resolve({"method": "alice", "dataset": "svhn"}).x_recon_weight == 1.0
  celeba = config_lib.resolve({"method": "alice", "dataset": "celeba"})
  assert (celeba.x_recon_weight, celeba.x_recon_loss) == (0.02, "l2")
  assert "x_recon_weight" not in config_lib.resolve({"method": "ali"}).method_settings


def test_gali_pt_celeba_uses_batch_20_for_50_epochs(tmp_path):
  config = config_lib.resolve({"method": "gali_pt", "dataset": "celeba",
                               "feature_model": "inception"})
  assert (config.batch_size, config.learning_rate) == (20, 4e-5)
  assert config.train_steps == 50 * (162770 // 20)


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
    ({"method": "wgan"}, "valid methods: age"),
    ({"dataset": "imagenet"}, "valid datasets: mnist, cifar10, svhn, celeba, digits, folder:PATH"),
    ({"image_size": 48}, "image_size=48"),
    ({"batch_size": 4096}, "larger than the 1497 training images"),
    ({"batch_size": 0}, "--batch_size=0 must be a positive"),
    ({"x_recon_weight": -1.0}, "--x_recon_weight=-1.0 must not be negative"),
    ({"lr_decay_factor": 2.0}, "lr_decay_factor"),
    ({"train_steps": -5}, "--train_steps=-5 must be positive"),
    ({"channels": 3}, "--channels is for folder"),
    ({"kl_estimator": "knn", "batch_size": 1}, "at least 2"),
    ({"method": "ali", "generator_steps": 3}, "--generator_steps applies to --method=age, "
     "not to --method=ali"),
    ({"method": "ali", "z_recon_weight": 5.0}, "--z_recon_weight applies to --method=age"),
    ({"d_steps": 5}, "--d_steps applies to --method=ali, bigan, alice, gali4, gali8, gali_pt, "
     "gali_mix, not to --method=age"),
    ({"method": "gali4", "x_recon_weight": 1.0}, "--x_recon_weight applies to --method=age, "
     "alice, not to --method=gali4"),
    ({"method": "age", "mask_sampler": "central"}, "--mask_sampler applies to "
     "--method=ali, bigan, alice, gali4, gali8, gali_pt, gali_mix, not to --method=age"),
    ({"method": "gali_mix", "masked_inputs": False}, "--method=gali_mix always masks its "
     "encoder inputs; drop --nomasked_inputs"),
    ({"method": "ali", "masked_inputs": True, "mask_max_size": 0}, "--mask_max_size=0 must be"),
    ({"method": "gali4", "d_steps": 5, "simultaneous_updates": True}, "needs --d_steps=1"),
    ({"method": "gali4", "d_steps": 0}, "--d_steps=0 must be a positive"),
    ({"method": "gali_pt"}, "--method=gali_pt needs --feature_model"),
    ({"method": "gali_pt", "feature_model": "/no/such/classifier"}, "does not exist"),
    ({"method": "gali_mix", "mask_max_size": 40}, "--mask_max_size=40 must be in 1..32"),
])
def test_bad_values_are_refused_with_a_clear_message(values, message):
  with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config_lib.resolve(values)


def test_cli_refuses_unknown_method_with_one_line_and_no_traceback(tmp_path):
  # In a new interpreter (the suite's other commands are forks of one that
  # has imported TensorFlow): `python -m age_tf.train` from nothing imported.
  result = run_module("age_tf.train", "--method=wgan", f"--model_dir={tmp_path}", timeout=120,
                      fresh=True)
  assert result.returncode == 2
  assert ("error: Unknown --method='wgan'; valid methods: age, ali, bigan, alice, gali4, gali8, "
          "gali_pt, gali_mix, vae." in result.stderr)
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)  # nothing was written


def test_svhn_split_defaults_to_each_methods_authors():
  # The GALI authors' SVHN scripts load split='extra' alone; AGE has no published SVHN
  # command and keeps the train split. An explicit --svhn_split wins.
  age = config_lib.resolve({"method": "age", "dataset": "svhn"})
  assert (age.svhn_split, age.num_train) == ("train", 73257)
  for method in ("ali", "gali4", "gali_mix"):
    config = config_lib.resolve({"method": method, "dataset": "svhn"})
    assert (config.svhn_split, config.num_train) == ("extra", 531131), method
  both = config_lib.resolve({"method": "gali4", "dataset": "svhn", "svhn_split": "train+extra"})
  assert both.num_train == 73257 + 531131
  assert config_lib.resolve({"method": "gali4"}).svhn_split == "train"  # digits: unused


@pytest.mark.parametrize("method", ["age", "gali4", "gali_mix"])
def test_flags_json_of_older_versions_with_every_method_setting_still_loads(method):
  # Versions before per-method settings wrote every method's settings, the
  # unused ones as null (and x_recon_weight 0.0, x_recon_loss "l2" for all).
  config = config_lib.resolve({"method": method})
  old = {name: None for name in config_lib.SETTING_OWNERS}
  old.update(x_recon_weight=0.0, x_recon_loss="l2")
  old.update(json.loads(config.to_json()))
  assert set(old) > set(json.loads(config.to_json()))
  assert config_lib.from_saved(old) == config
  # What this version writes reads back the same, and names only the method's settings.
  assert set(json.loads(config.to_json())) - set(config_lib.SHARED_NAMES) - {
      "num_train", "steps_per_epoch"} == set(config.method_settings)
  if method == "gali_mix":  # written before --masked_inputs existed: it masked all along
    older = config_lib.from_saved({k: v for k, v in old.items() if k != "masked_inputs"})
    assert older.masked_inputs is None and METHODS[method].always_masked
  with pytest.raises(TypeError, match="does not know: no_such_setting"):
    config_lib.from_saved(dict(old, no_such_setting=1))


def test_a_small_folder_trains_at_least_the_floor_unless_told(tmp_path):
  folder = f"folder:{_image_folder(tmp_path)}"
  config = config_lib.resolve({"dataset": folder})
  assert config.steps_per_epoch * 6 < config_lib.FOLDER_MIN_TRAIN_STEPS  # 6 epochs: a few steps
  assert config.train_steps == config_lib.FOLDER_MIN_TRAIN_STEPS
  assert config_lib.resolve({"dataset": folder, "train_steps": 7}).train_steps == 7
  assert config_lib.resolve({"dataset": "digits"}).train_steps == 920  # datasets of known size
