"""Labelled pipelines, the feature classifier and its entry point, and the frozen feature models."""

import json
import os
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sk_datasets

from age_tf import data
from age_tf import features
from age_tf.errors import UserError

from conftest import run_module

# Digits has 10 balanced classes: chance is 0.1. Four epochs reach about
# 0.96 (measured: 0.95 after two, 0.97 after five), so 0.9 is far above
# chance with room for seeds and thread counts.
DIGITS_EPOCHS = 4
MIN_DIGITS_ACCURACY = 0.9
FEATURE_DIM = 64


def all_batches(ds):
  images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
  return np.concatenate(images), np.concatenate(labels)


def test_labelled_digits_shapes_range_labels_and_sizes():
  spec = data.get_spec("digits")
  assert data.num_classes(spec) == 10
  for split, count in (("train", spec.num_train), ("test", spec.num_test)):
    images, labels = all_batches(data.labelled_dataset(spec, split, 128))
    assert images.dtype == np.float32 and labels.dtype == np.int64
    assert images.shape == (count, 32, 32, 1) and labels.shape == (count,)
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
    assert sorted(set(labels)) == list(range(10))
  # The test split is the generative models' (the same images, in order),
  # with scikit-learn's labels.
  _, test_labels = data._digits_arrays()["test"]  # pylint: disable=protected-access
  np.testing.assert_array_equal(labels, test_labels)
  np.testing.assert_array_equal(images, data.test_images(spec, spec.num_test).numpy())
  assert set(labels) <= set(sk_datasets.load_digits().target)
  # Shuffled, repeated, fixed-size batches: the same images and labels, reordered.
  shuffled = data.labelled_dataset(spec, "test", 100, shuffle=True, seed=3, repeat=True,
                                   drop_remainder=True)
  x, y = all_batches(shuffled.take(3))
  assert x.shape == (300, 32, 32, 1) and not np.array_equal(y, labels)
  assert sorted(y) == sorted(labels)


@pytest.mark.parametrize("name,channels", [("svhn", 3), ("mnist", 1)])
def test_labelled_tfds_through_mock_data(name, channels, tmp_path):
  spec = data.get_spec(name)
  assert data.num_classes(spec) == 10
  with tfds.testing.mock_data(num_examples=10):
    ds = data.labelled_dataset(spec, "train", 4, data_dir=str(tmp_path), shuffle=True)
    images, labels = all_batches(ds)
  # mock_data leaves info.splits empty; count only what came out.
  assert images.shape == (10, 32, 32, channels) and images.dtype == np.float32
  assert labels.shape == (10,) and labels.dtype == np.int64
  assert images.min() >= -1.0 and images.max() <= 1.0 and images.std() > 0.1
  assert labels.min() >= 0 and labels.max() <= 9


def test_celeba_has_no_labels():
  spec = data.get_spec("celeba")
  for call in (lambda: data.num_classes(spec), lambda: data.labelled_dataset(spec, "train", 4)):
    with pytest.raises(UserError, match="celeba has no class labels"):
      call()


def write_image(path, color):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", (20, 20), color).save(path)


def test_labelled_folder_uses_class_folders_shared_by_both_splits(tmp_path):
  root = tmp_path / "classes"
  colours = {"cat": (255, 0, 0), "dog": (0, 0, 255)}
  for cls, colour in colours.items():
    for i in range(3):
      write_image(str(root / "train" / cls / f"{i}.png"), colour)
  write_image(str(root / "val" / "dog" / "v.png"), colours["dog"])  # test has only "dog"
  spec = data.get_spec(f"folder:{root}")
  assert data.num_classes(spec) == 2
  images, labels = all_batches(data.labelled_dataset(spec, "train", 4))
  assert images.shape == (6, 32, 32, 3) and sorted(labels) == [0, 0, 0, 1, 1, 1]
  assert all((images[labels == 1][..., 2] == 1.0).ravel())  # "dog" (blue) is class 1
  _, test_labels = all_batches(data.labelled_dataset(spec, "test", 4))
  assert list(test_labels) == [1]  # class 1 in the test split too, not its own index 0

  # Tiny ImageNet's val/images/ layout: the test "class" is not a training class.
  write_image(str(root / "val" / "images" / "v2.png"), (0, 0, 0))
  with pytest.raises(UserError, match="'images', which is not a training class"):
    data.num_classes(data.get_spec(f"folder:{root}"))
  flat = tmp_path / "flat"
  for i in range(4):
    write_image(str(flat / f"{i}.png"), (i, 0, 0))
  with pytest.raises(UserError, match="outside class folders"):
    data.labelled_dataset(data.get_spec(f"folder:{flat}"), "train", 4)


@pytest.fixture(scope="module")
def digits_classifier(tmp_path_factory):
  model_dir = str(tmp_path_factory.mktemp("classifier"))
  metrics = features.train_classifier(
      data.get_spec("digits"), model_dir, epochs=DIGITS_EPOCHS, batch_size=64,
      learning_rate=1e-3, feature_dim=FEATURE_DIM, seed=0, verbose=0)
  return model_dir, metrics


def test_digits_classifier_learns_and_is_saved(digits_classifier):
  model_dir, metrics = digits_classifier
  print(f"digits test accuracy after {DIGITS_EPOCHS} epochs: {metrics['test_accuracy']:.4f}")
  assert metrics["test_accuracy"] >= MIN_DIGITS_ACCURACY
  assert sorted(os.listdir(model_dir)) == ["classifier.json", "classifier.keras"]  # no temps
  with open(os.path.join(model_dir, "classifier.json")) as f:
    info = json.load(f)
  assert info == metrics
  assert (info["dataset"], info["image_size"], info["channels"], info["num_classes"],
          info["feature_dim"], info["epochs"]) == ("digits", 32, 1, 10, FEATURE_DIM,
                                                   DIGITS_EPOCHS)


@pytest.mark.parametrize("which", ["directory", "file"])
def test_classifier_features_are_frozen_and_differentiable(digits_classifier, which):
  model_dir, _ = digits_classifier
  path = model_dir if which == "directory" else os.path.join(model_dir, "classifier.keras")
  model = features.load_feature_model(path, 32, 1)
  assert features.feature_dim(model) == FEATURE_DIM
  assert not model.trainable and not model.trainable_variables and model.non_trainable_variables
  images, _ = next(iter(data.labelled_dataset(data.get_spec("digits"), "test", 8)))
  before = [v.numpy() for v in model.variables]
  with tf.GradientTape() as tape:
    tape.watch(images)
    y = model(images, training=True)  # training mode must not move BatchNorm statistics
    loss = tf.reduce_sum(tf.square(y))
  assert y.shape == (8, FEATURE_DIM) and y.dtype == tf.float32
  gradient = tape.gradient(loss, images)
  assert gradient.shape == images.shape and float(tf.reduce_max(tf.abs(gradient))) > 0
  for a, b in zip(before, model.variables):
    np.testing.assert_array_equal(a, b.numpy())
  np.testing.assert_allclose(y, model(images, training=False), rtol=1e-5, atol=1e-5)


def test_wrong_shape_classifier_is_refused_naming_both_shapes(digits_classifier):
  model_dir, _ = digits_classifier
  with pytest.raises(UserError) as e:
    features.load_feature_model(model_dir, 32, 3)
  assert "32x32x1" in str(e.value) and "32x32x3" in str(e.value)


def test_feature_model_paths_that_are_not_classifiers(tmp_path):
  with pytest.raises(UserError, match="neither 'inception' nor an existing file"):
    features.load_feature_model(str(tmp_path / "missing.keras"), 32, 1)
  with pytest.raises(UserError, match="holds no classifier.keras"):
    features.load_feature_model(str(tmp_path), 32, 1)
  (tmp_path / "junk.keras").write_text("not a model")
  with pytest.raises(UserError, match="is not a Keras model"):
    features.load_feature_model(str(tmp_path / "junk.keras"), 32, 1)
  # A Keras model without a "features" layer.
  inputs = keras.Input((32, 32, 1))
  keras.Model(inputs, keras.layers.Flatten()(inputs)).save(str(tmp_path / "other.keras"))
  with pytest.raises(UserError, match="no layer named 'features'"):
    features.load_feature_model(str(tmp_path / "other.keras"), 32, 1)


def test_entry_point_trains_digits_and_reports_errors_in_one_line(tmp_path):
  model_dir = tmp_path / "run"
  result = run_module("age_tf.classifier", "--dataset=digits", f"--model_dir={model_dir}",
                      "--epochs=2", "--feature_dim=32")
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(model_dir)) == ["classifier.json", "classifier.keras"]
  assert "Test accuracy" in result.stderr and str(model_dir) in result.stderr
  with open(model_dir / "classifier.json") as f:
    assert json.load(f)["epochs"] == 2
  for dataset, message in (("imagenet", "Unknown --dataset='imagenet'"),
                           ("celeba", "celeba has no class labels")):
    bad = tmp_path / dataset
    result = run_module("age_tf.classifier", f"--dataset={dataset}", f"--model_dir={bad}")
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr and not bad.exists()


@pytest.mark.parametrize("weights", [None, "missing.h5"])
def test_inception_without_weights_fails_at_once(weights, tmp_path):
  began = time.time()
  with pytest.raises(UserError) as e:
    features.load_feature_model("inception", 32, 1, inception_weights=weights and
                                str(tmp_path / weights))
  assert time.time() - began < 0.5
  assert "--inception_weights" in str(e.value)
  assert features.INCEPTION_WEIGHTS_FILE in str(e.value)


def test_inception_features_from_a_local_weights_file(tmp_path):
  """Random weights the test writes itself (no download): 2048-d pool3 of 32x32x1 images."""
  weights = str(tmp_path / "w.weights.h5")
  keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                 input_shape=(299, 299, 3)).save_weights(weights)
  model = features.load_feature_model("inception", 32, 1, inception_weights=weights)
  assert features.feature_dim(model) == 2048 and not model.trainable_variables
  images = tf.random.uniform((2, 32, 32, 1), -1.0, 1.0, seed=0)
  with tf.GradientTape() as tape:
    tape.watch(images)
    y = model(images)
  assert y.shape == (2, 2048)
  assert float(tf.reduce_max(tf.abs(tape.gradient(y, images)))) > 0
  # The weights file was loaded, not a fresh random initialisation.
  reference = keras.applications.InceptionV3(weights=None, include_top=False, pooling="avg",
                                             input_shape=(299, 299, 3))
  reference.load_weights(weights)
  grey = tf.image.resize(images, [299, 299], method="bilinear")
  np.testing.assert_allclose(y, reference(tf.concat([grey] * 3, axis=-1)), rtol=1e-4, atol=1e-4)
