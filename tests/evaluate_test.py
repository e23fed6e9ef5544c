"""python -m age_tf.evaluate end to end on the digits AGE run: metrics.json, figures, TensorBoard, errors."""

import copy
import json
import math
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator

from absl import flags

from age_tf import config as config_lib
from age_tf import evaluate
from age_tf.methods import METHODS
from age_tf.metrics import svm

from conftest import LEARNING_STEPS
from conftest import run_module
from conftest import start_module

# Small counts keep the run short (about a minute on a 2-core CPU); the
# defaults are exercised by the README's commands and benchmarks/quality.py.
FAST_FLAGS = ("--svm_repeats=3", "--classifier_epochs=3", "--num_fid_samples=500")
METRIC_KEYS = (
    "recon/pixel_mse", "recon/pixel_mse_std", "recon/feature_mse", "recon/feature_mse_std",
    "recon/pixel_mse_moving", "recon/pixel_mse_batch_stats", "recon/mean_image_pixel_mse",
    "recon/untrained_pixel_mse", "fid", "kid", "kid_std", "svm/error", "svm/error_std",
    "inpaint/pixel_mse", "inpaint/pixel_mse_std", "inpaint/feature_mse",
    "inpaint/feature_mse_std", "codes/fake_mean", "codes/fake_var", "codes/real_mean",
    "codes/real_var")
# (height, width) of each figure for 32x32 digits: 8x8 samples; 32 real |
# reconstruction pairs in 8 columns; 8 interpolations of 8 steps between two
# real images; 16 restorations in rows corrupted, restored (4 rows of 8).
FIGURE_SIZES = {"samples": (256, 256), "reconstructions": (256, 256),
                "interpolations": (256, 320), "restorations": (128, 256)}


def copy_run(model_dir, destination):
  """The run's flags.json and checkpoints (the shared fixture's directory stays untouched)."""
  os.makedirs(destination)
  shutil.copy(os.path.join(model_dir, "flags.json"), destination)
  shutil.copytree(os.path.join(model_dir, "checkpoints"), os.path.join(destination, "checkpoints"))
  return str(destination)


@pytest.fixture(scope="module")
def evaluated(digits_run, tmp_path_factory):
  model_dir = copy_run(digits_run[0], tmp_path_factory.mktemp("evaluate") / "run")
  result = run_module("age_tf.evaluate", f"--model_dir={model_dir}", *FAST_FLAGS)
  assert result.returncode == 0, result.stderr[-5000:]
  return model_dir, result


def test_metrics_json_has_every_metric_finite_and_its_sample_counts(evaluated):
  model_dir, result = evaluated
  out_dir = os.path.join(model_dir, "eval", str(LEARNING_STEPS))
  with open(os.path.join(out_dir, "metrics.json")) as f:
    report = json.load(f)
  print(result.stdout)
  assert report["method"] == "age" and report["step"] == LEARNING_STEPS
  assert report["metrics_computed"] == ["recon", "fid", "kid", "svm", "inpaint"]
  metrics = report["metrics"]
  assert sorted(metrics) == sorted(METRIC_KEYS)
  assert all(math.isfinite(v) for v in metrics.values()), metrics
  # Trained beats untrained on reconstruction (by far: about 0.02 against 0.14).
  assert metrics["recon/pixel_mse"] < metrics["recon/untrained_pixel_mse"] / 3
  # Served (recomputed statistics) within 10% of training mode; digits' moving averages
  # agree too (docs/inference_statistics.md).
  assert metrics["recon/pixel_mse"] < 1.1 * metrics["recon/pixel_mse_batch_stats"]
  # learning_test's bar against the mean image (its docstring has the seeds'
  # figures): 0.75 of the mean image's error (0.035). At half of it (0.023) one
  # of four seeds of the learning run (0.0248; the others 0.019-0.022) would
  # fail, and so would the README's width-16 run with one intra-op thread
  # (0.0346, which also shows that a run can land near the learning bar).
  assert metrics["recon/pixel_mse"] < 0.75 * metrics["recon/mean_image_pixel_mse"]
  assert report["bn_statistics"]["mode"] == "recompute"
  assert report["bn_statistics"]["encoder_images"] == 1497  # the whole train split
  assert metrics["svm/error"] < 0.5 and metrics["kid_std"] > 0
  # The report states what was computed on how much.
  settings = report["settings"]
  assert settings["recon"]["images"] == 300
  assert settings["fid_kid"]["real"] == 500 and settings["fid_kid"]["generated"] == 500
  assert settings["fid_kid"]["kid_blocks"] == 10
  assert settings["svm"]["repeats"] == 3 and settings["svm"]["per_class"] == 10
  assert settings["svm"]["validation"] == 300 and settings["svm"]["pool"] == 1197
  assert settings["svm"]["grid"]["size"] == 50 and settings["svm"]["test"] == 300
  assert settings["inpaint"]["images"] == 300 and settings["inpaint"]["sampler"] == "uniform"
  # The digits classifier of the suite's shared cache (conftest), not one of this run's own.
  assert report["feature_model"]["cached"] and report["feature_model"]["dim"] == 512
  assert os.path.dirname(report["feature_model"]["name"]) == os.environ["AGE_TF_CACHE_DIR"]
  assert not os.path.exists(os.path.join(model_dir, "eval", evaluate.CLASSIFIER_DIR))
  assert len(report["svm"]["errors"]) == 3 and len(report["codes"]["fake_var"]) == 10
  assert "recon/pixel_mse" in result.stdout and "metrics.json" in result.stdout


def test_figures_decode_to_their_grid_sizes(evaluated):
  model_dir, _ = evaluated
  out_dir = os.path.join(model_dir, "eval", str(LEARNING_STEPS))
  for name, size in FIGURE_SIZES.items():
    with Image.open(os.path.join(out_dir, f"{name}.png")) as image:
      pixels = np.asarray(image)
    assert pixels.shape[:2] == size, name
    assert pixels.std() > 5, name  # not blank
  with Image.open(os.path.join(out_dir, "codes.png")) as image:
    assert image.mode == "RGB" and image.size[0] >= 240 and image.size[1] >= 200
  assert not [f for f in os.listdir(out_dir) if ".tmp" in f]


def test_tensorboard_summaries_under_eval(evaluated):
  model_dir, _ = evaluated
  accumulator = event_accumulator.EventAccumulator(
      os.path.join(model_dir, "eval"), size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  tags = set(accumulator.Tags()["tensors"])
  assert {"eval/recon/pixel_mse", "eval/fid", "eval/kid", "eval/svm/error",
          "eval/inpaint/pixel_mse", "eval/samples", "eval/codes"} <= tags
  assert accumulator.Tensors("eval/fid")[0].step == LEARNING_STEPS


def test_untrained_evaluation_reuses_the_cached_classifier(evaluated):
  model_dir, _ = evaluated
  result = run_module("age_tf.evaluate", f"--model_dir={model_dir}", "--untrained",
                      "--metrics=recon", *FAST_FLAGS)
  assert result.returncode == 0, result.stderr[-5000:]
  with open(os.path.join(model_dir, "eval", "untrained", "metrics.json")) as f:
    untrained = json.load(f)
  with open(os.path.join(model_dir, "eval", str(LEARNING_STEPS), "metrics.json")) as f:
    trained = json.load(f)
  assert untrained["untrained"] and untrained["metrics_computed"] == ["recon"]
  assert not untrained["feature_model"]["trained_now"]
  assert untrained["feature_model"]["name"] == trained["feature_model"]["name"]
  # The same seeded initial weights as the trained report's baseline.
  assert untrained["metrics"]["recon/pixel_mse"] == pytest.approx(
      trained["metrics"]["recon/untrained_pixel_mse"], rel=1e-4)


def test_the_digits_classifier_is_trained_once_and_shared_between_runs(tmp_path):
  """Two evaluations started together on an empty cache: one trains the classifier, the other
  waits for it and reuses it (the same features, so the same feature MSE of the same model).
  Other --classifier_epochs: another classifier. A cache that cannot be created: the run's own
  copy under MODEL_DIR/eval, with a warning."""
  trained = run_module("age_tf.train", "--method=age", "--dataset=digits", "--width=4",
                       "--batch_size=16", "--train_steps=2", "--bn_statistics_images=128",
                       "--noexport", f"--model_dir={tmp_path / 'trained'}")
  assert trained.returncode == 0, trained.stderr[-3000:]
  runs = [copy_run(str(tmp_path / "trained"), tmp_path / f"run{i}") for i in range(4)]
  cache = tmp_path / "cache"

  def evaluate_args(model_dir, epochs):
    return (f"--model_dir={model_dir}", "--metrics=recon", f"--classifier_epochs={epochs}")

  def report(model_dir):
    with open(os.path.join(model_dir, "eval", "2", "metrics.json")) as f:
      return json.load(f)

  processes = [start_module("age_tf.evaluate", *evaluate_args(d, 1),
                            f"--classifier_cache={cache}") for d in runs[:2]]
  for process in processes:
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]
  reports = [report(d) for d in runs[:2]]
  print([r["feature_model"] for r in reports])
  assert sorted(r["feature_model"]["trained_now"] for r in reports) == [False, True]
  names = {r["feature_model"]["name"] for r in reports}
  assert len(names) == 1 and os.path.dirname(next(iter(names))) == str(cache)
  assert all(r["feature_model"]["epochs"] == 1 for r in reports)
  assert not any(os.path.exists(os.path.join(d, "eval", evaluate.CLASSIFIER_DIR))
                 for d in runs[:2])
  first, second = (r["metrics"]["recon/feature_mse"] for r in reports)
  assert first == pytest.approx(second, rel=1e-6)
  # Other epochs, through $AGE_TF_CACHE_DIR: a second classifier beside the first.
  result = run_module("age_tf.evaluate", *evaluate_args(runs[2], 2),
                      env={"AGE_TF_CACHE_DIR": str(cache)})
  assert result.returncode == 0, result.stderr[-3000:]
  other = report(runs[2])["feature_model"]
  assert other["trained_now"] and other["epochs"] == 2 and other["name"] not in names
  assert len([p for p in os.listdir(cache) if not p.endswith(".lock")]) == 2
  # A cache directory that cannot be created (its parent is a file).
  (tmp_path / "a_file").write_text("")
  result = run_module("age_tf.evaluate", *evaluate_args(runs[3], 1),
                      env={"AGE_TF_CACHE_DIR": str(tmp_path / "a_file" / "cache")})
  assert result.returncode == 0, result.stderr[-3000:]
  assert "Cannot keep the digits classifier in" in result.stderr
  own = report(runs[3])["feature_model"]
  assert own["trained_now"] and own["name"] == os.path.join(runs[3], "eval",
                                                            evaluate.CLASSIFIER_DIR)


@pytest.mark.parametrize("args,message", [
    ((), "has no trained model"),  # a model_dir with no checkpoint
    (("--untrained", "--metrics=recon,bogus"), "unknown metric"),
    (("--untrained", "--svm_hidden_layers=0"), "must be positive"),
    # AGE's digits encoder has 3 hidden nonlinearities: refused before any work.
    (("--untrained", "--metrics=svm", "--svm_hidden_layers=5"), "--svm_hidden_layers=5"),
])
def test_bad_input_prints_one_error_line_and_exits_2(tmp_path, args, message):
  model_dir = tmp_path / "run"
  model_dir.mkdir()
  (model_dir / "flags.json").write_text(config_lib.resolve(
      {"method": "age", "dataset": "digits", "model_dir": str(model_dir)}).to_json())
  result = run_module("age_tf.evaluate", f"--model_dir={model_dir}", *args)
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert result.returncode == 2, result.stderr[-3000:]
  assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  assert not (model_dir / "eval").exists()


@pytest.mark.parametrize("method,dim", [
    # AGE, 32x32, width 16: lrelu0 16x16x16, lrelu1 8x8x32, lrelu2 4x4x64, M = 10.
    ("age", 16 * 16 * 16 + 8 * 8 * 32 + 4 * 4 * 64 + 10),
    # ALI/GALI digits, width 8: lrelu4 4x4x64, lrelu5 1x1x128, lrelu6 dense 128, mean M = 8.
    ("gali4", 4 * 4 * 64 + 128 + 128 + 8),
])
def test_svm_features_are_the_last_three_hidden_layers_and_the_mean(method, dim):
  config = config_lib.resolve({"method": method, "dataset": "digits", "model_dir": "/unused"})
  model = METHODS[method].create(config)
  images = np.random.default_rng(0).uniform(-1, 1, size=(3, 32, 32, 1)).astype(np.float32)
  features = svm.encoder_features(model)(images)
  assert features.shape == (3, dim)
  np.testing.assert_allclose(features[:, -config.latent_dim:], model.encode(images).numpy(),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method,count,dim,slope", [
    ("age", 3, 16 * 16 * 16 + 8 * 8 * 32 + 4 * 4 * 64 + 10, 0.2),  # the DCGAN slope
    # The ALI authors' reading: bn2 13x13x16, bn3 10x10x32, bn4 4x4x64, bn5 128, bn6 128, M = 8;
    # the ALI networks' 32x32 slope.
    ("gali4", 5, 13 * 13 * 16 + 10 * 10 * 32 + 4 * 4 * 64 + 128 + 128 + 8, 0.01),
])
def test_svm_pre_activation_features_are_what_the_nonlinearities_receive(method, count, dim,
                                                                         slope):
  """--svm_features=pre_activations reads each hidden layer before its LeakyReLU: applying
  that LeakyReLU (restated in numpy, with the networks' specified slope) gives the default
  features."""
  config = config_lib.resolve({"method": method, "dataset": "digits", "model_dir": "/unused"})
  model = METHODS[method].create(config)
  images = np.random.default_rng(0).uniform(-1, 1, size=(3, 32, 32, 1)).astype(np.float32)
  pre = svm.encoder_features(model, count, "pre_activations")(images)
  post = svm.encoder_features(model, count, "activations")(images)
  assert pre.shape == post.shape == (3, dim)
  hidden = pre[:, :dim - config.latent_dim]
  assert (hidden < 0).mean() > 0.2  # the two readings differ
  np.testing.assert_allclose(np.where(hidden > 0, hidden, slope * hidden),
                             post[:, :dim - config.latent_dim], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(pre[:, -config.latent_dim:], model.encode(images).numpy(),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="hidden nonlinearity layers"):
    svm.hidden_layers(model.encoder, 7)
  with pytest.raises(ValueError, match="at least 1"):
    svm.hidden_layers(model.encoder, 0)


def test_one_metric_runs_its_unit_alone_with_the_settings_given(digits_run, tmp_path):
  """evaluate(model_dir, EvalSettings) in this process (no flags parsed): --metrics=svm computes
  the svm unit only (no feature model, no other unit's keys), with the settings passed."""
  model_dir = copy_run(digits_run[0], tmp_path / "run")
  settings = evaluate.EvalSettings(metrics=("svm",), svm_repeats=2)
  report, out_dir = evaluate.evaluate(model_dir, settings)
  with open(os.path.join(out_dir, "metrics.json")) as f:
    written = json.load(f)
  assert written["metrics_computed"] == ["svm"] and written["step"] == LEARNING_STEPS
  assert sorted(written["metrics"]) == sorted(
      ["svm/error", "svm/error_std", "codes/fake_mean", "codes/fake_var", "codes/real_mean",
       "codes/real_var"])
  assert set(written["settings"]) == {"svm"} and written["settings"]["svm"]["repeats"] == 2
  assert set(written["seconds"]) == {"svm", "figures", "total"}
  assert "feature_model" not in written and len(written["svm"]["errors"]) == 2
  assert not os.path.exists(os.path.join(model_dir, "eval", evaluate.CLASSIFIER_DIR))
  assert written["metrics"]["svm/error"] == pytest.approx(report["metrics"]["svm/error"])


def test_a_later_evaluation_of_other_metrics_keeps_the_earlier_ones(evaluated, tmp_path):
  """--metrics=svm over a full evaluation of the same checkpoint replaces svm and keeps the other
  units' metrics and settings; served with other BatchNorm statistics, nothing is kept."""
  model_dir = str(tmp_path / "run")
  shutil.copytree(evaluated[0], model_dir)
  path = os.path.join(model_dir, "eval", str(LEARNING_STEPS), "metrics.json")
  with open(path) as f:
    full = json.load(f)
  assert full["settings"]["svm"]["repeats"] == 3 and "kept_from_earlier" not in full
  evaluate.evaluate(model_dir, evaluate.EvalSettings(metrics=("svm",), svm_repeats=2))
  with open(path) as f:
    merged = json.load(f)
  assert merged["kept_from_earlier"] == ["fid_kid", "inpaint", "recon"]
  assert merged["metrics_computed"] == ["svm"] and merged["settings"]["svm"]["repeats"] == 2
  assert len(merged["svm"]["errors"]) == 2
  for unit in ("fid_kid", "inpaint", "recon"):
    assert merged["settings"][unit] == full["settings"][unit]
  for key in ("fid", "kid", "inpaint/pixel_mse", "recon/pixel_mse", "recon/feature_mse"):
    assert merged["metrics"][key] == full["metrics"][key]
  assert merged["feature_model"] == full["feature_model"]
  evaluate.evaluate(model_dir, evaluate.EvalSettings(metrics=("svm",), svm_repeats=2,
                                                     bn_statistics="moving"))
  with open(path) as f:
    other = json.load(f)
  assert "kept_from_earlier" not in other and set(other["settings"]) == {"svm"}
  assert "fid" not in other["metrics"]


def test_settings_from_flags_defaults_and_given_flags():
  flag_values = copy.deepcopy(flags.FLAGS)
  flag_values(["evaluate"])
  assert evaluate.settings_from_flags(flag_values) == evaluate.EvalSettings()
  flag_values = copy.deepcopy(flags.FLAGS)
  flag_values(["evaluate", "--metrics=svm,recon", "--svm_repeats=3", "--mask_fill=-2",
               "--feature_model=inception", "--bn_statistics=moving", "--untrained"])
  assert evaluate.settings_from_flags(flag_values) == evaluate.EvalSettings(
      metrics=("svm", "recon"), svm_repeats=3, mask_fill=-2.0, feature_model="inception",
      bn_statistics="moving", untrained=True)


def test_help_lists_every_flag_evaluate_reads():
  result = run_module("age_tf.evaluate", "--help", timeout=300)  # absl's --help exits 1
  listed = {line.split(":")[0].strip().replace("--[no]", "--")
            for line in result.stdout.splitlines() if line.startswith("  --")}
  expected = {"metrics", "checkpoint", "untrained", "eval_batch_size", "num_fid_samples",
              "svm_repeats", "classifier_epochs", "classifier_cache"} | set(evaluate.SHARED_FLAGS)
  assert {f"--{name}" for name in expected} <= listed, listed
  assert "--learning_rate" not in listed and "--d_steps" not in listed


def test_inpainting_fills_holes_as_the_run_was_trained_only_when_it_was_trained_on_masks():
  """A run trained on masked encoder inputs (GALI-mix, --masked_inputs) is inpainted with its
  own --mask_*; any other run with uniform full-size rectangles filled with -1 (black),
  whatever mask settings its flags.json holds; evaluate's own --mask_* win over both."""
  def masks_of(method, **values):
    config = config_lib.resolve(dict(method=method, dataset="digits", mask_fill=-1.5,
                                     mask_max_size=20, **values))
    model = METHODS[method].create(config)
    return evaluate._mask_settings(config, evaluate.EvalSettings(), model.masks_encoder_inputs)

  own = dict(sampler="uniform", max_size=20, fill=-1.5)
  default = dict(sampler="uniform", max_size=32, fill=-1.0)
  assert masks_of("ali") == default
  assert masks_of("ali", masked_inputs=True) == own
  assert masks_of("gali_mix") == own
  config = config_lib.resolve(dict(method="age", dataset="digits"))
  assert not METHODS["age"].create(config).masks_encoder_inputs
  assert evaluate._mask_settings(config, evaluate.EvalSettings(), False) == default
  given = evaluate.EvalSettings(mask_fill=-0.5)
  assert evaluate._mask_settings(config, given, False)["fill"] == -0.5
