"""Datasets and pipelines: tfds through tfds.testing.mock_data, digits and folder: through real files."""

import os
import socket
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image
from sklearn import datasets as sk_datasets
from sklearn import model_selection

from age_tf import data
from age_tf.errors import UserError


def take_train(spec, batch=4, batches_per_step=3, **kwargs):
  ds = data.train_dataset(spec, batch, batches_per_step, seed=0, **kwargs)
  return next(iter(ds)).numpy()


def assert_images(x, shape):
  assert x.dtype == np.float32
  assert x.shape == shape
  assert x.min() >= -1.0 and x.max() <= 1.0


@pytest.mark.parametrize("name,size,channels", [("mnist", 32, 1), ("cifar10", 32, 3),
                                                ("svhn", 32, 3), ("celeba", 64, 3)])
def test_tfds_datasets_through_mock_data(name, size, channels, tmp_path):
  spec = data.get_spec(name)
  assert (spec.image_size, spec.channels) == (size, channels)
  with tfds.testing.mock_data(num_examples=12):
    x = take_train(spec, data_dir=str(tmp_path), cache="none")
    test = data.test_images(spec, 5, data_dir=str(tmp_path))
  assert_images(x, (3, 4, size, size, channels))
  assert_images(test.numpy(), (5, size, size, channels))
  assert x.std() > 0.1  # real (random mock) pixels, not a constant


def test_svhn_extra_split_is_used_and_counted(tmp_path):
  spec = data.get_spec("svhn", svhn_split="train+extra")
  assert spec.train_split == "train+extra" and spec.num_train == 73257 + 531131
  extra = data.get_spec("svhn", svhn_split="extra")
  assert extra.train_split == "extra" and extra.num_train == 531131
  with tfds.testing.mock_data(num_examples=6):
    assert_images(take_train(spec, batch=2, data_dir=str(tmp_path)), (3, 2, 32, 32, 3))
  with pytest.raises(UserError, match="svhn_split"):
    data.get_spec("svhn", svhn_split="extra_only")


def test_celeba_crop_keeps_rows_7_to_70_of_the_64x78_resize():
  # A 218x178 image whose rows encode their index: the crop keeps resized rows 7..70.
  rows = np.repeat(np.linspace(0, 255, 218)[:, None], 178, axis=1)
  image = tf.constant(np.repeat(rows[..., None], 3, axis=2).astype(np.uint8))
  cropped = data._celeba_crop(image).numpy()  # pylint: disable=protected-access
  assert cropped.shape == (64, 64, 3)
  full = tf.image.resize(tf.cast(image, tf.float32), [78, 64], antialias=True).numpy()
  np.testing.assert_allclose(cropped[:, :, 0], np.round(full[7:71, :, 0]), atol=1)


def test_digits_split_is_fixed_stratified_and_real():
  spec = data.get_spec("digits")
  assert (spec.image_size, spec.channels, spec.num_train, spec.num_test) == (32, 1, 1497, 300)
  first = [b["image"].numpy() for b in data.source(spec, "test").batch(300)][0]
  second = [b["image"].numpy() for b in data.source(spec, "test").batch(300)][0]
  np.testing.assert_array_equal(first, second)
  labels = np.concatenate([b["label"].numpy() for b in data.source(spec, "test").batch(100)])
  assert sorted(set(labels)) == list(range(10))
  assert np.bincount(labels).min() >= 28  # stratified: about 30 per class
  # Independently: scikit-learn's split with the documented seed, and PIL's
  # bilinear upsampling of each 8x8 digit, agree to the uint8 rounding.
  digits = sk_datasets.load_digits()
  _, test_idx = model_selection.train_test_split(
      np.arange(len(digits.target)), test_size=300, random_state=0, stratify=digits.target)
  expected = np.stack([
      np.asarray(Image.fromarray((digits.images[i] / 16 * 255).astype(np.float32), mode="F")
                 .resize((32, 32), Image.BILINEAR)) for i in test_idx])
  np.testing.assert_allclose(first[..., 0], expected, atol=0.5 + 1e-4)
  np.testing.assert_array_equal(labels, digits.target[test_idx])


def test_digits_train_stream_shapes_and_range():
  x = take_train(data.get_spec("digits"), batch=8, batches_per_step=2)
  assert_images(x, (2, 8, 32, 32, 1))
  assert not np.array_equal(x[0], x[1])  # each update draws its own batch
  # Every streamed image is a training image (shuffled), none a test image.
  spec = data.get_spec("digits")
  train = {im.tobytes() for im in data.to_float(
      next(iter(data.source(spec, "train").batch(2000)))["image"]).numpy()}
  test = {im.tobytes() for im in data.test_images(spec, 300).numpy()}
  streamed = [im.tobytes() for im in x.reshape((-1, 32, 32, 1))]
  assert all(im in train for im in streamed)
  assert not any(im in test and im not in train for im in streamed)


def write_image(path, size, color, mode="RGB", fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new(mode, size, color).save(path, format=fmt)


def test_folder_with_train_and_val_directories(tmp_path):
  root = tmp_path / "tiny"
  for cls in ("n01", "n02"):
    for i in range(3):
      write_image(str(root / "train" / cls / "images" / f"{i}.JPEG"), (64, 64), (255, 0, 0), fmt="JPEG")
  write_image(str(root / "val" / "images" / "v0.png"), (64, 48), (0, 255, 127))
  write_image(str(root / "val" / "images" / "v1.png"), (10, 10), 200, mode="L")
  (root / "train" / "notes.txt").write_text("not an image")
  spec = data.get_spec(f"folder:{root}")
  assert (spec.image_size, spec.channels, spec.num_train, spec.num_test) == (32, 3, 6, 2)
  labels = [int(b["label"]) for b in data.source(spec, "train")]
  assert sorted(labels) == [0, 0, 0, 1, 1, 1]
  test = data.test_images(spec, 2).numpy()
  assert_images(test, (2, 32, 32, 3))
  # A solid (0, 255, 127) PNG, resized from 64x48, is still that colour in [-1, 1].
  np.testing.assert_allclose(test[0], np.broadcast_to([-1.0, 1.0, 127 / 127.5 - 1], (32, 32, 3)),
                             atol=1e-6)
  # A grey 10x10 image becomes RGB 32x32 of its grey level.
  np.testing.assert_allclose(test[1], 200 / 127.5 - 1, atol=1e-6)
  assert_images(take_train(spec, batch=2), (3, 2, 32, 32, 3))


def test_folder_without_splits_holds_out_a_seeded_five_percent(tmp_path):
  for i in range(40):
    write_image(str(tmp_path / f"img{i:02d}.png"), (20, 30), (i * 6, 0, 0))
  spec = data.get_spec(f"folder:{tmp_path}", image_size=64, channels=1)
  assert (spec.num_train, spec.num_test, spec.image_size, spec.channels) == (38, 2, 64, 1)
  assert spec == data.get_spec(f"folder:{tmp_path}", image_size=64, channels=1)
  assert not set(spec.train_files) & set(spec.test_files)
  assert_images(take_train(spec, batch=5, batches_per_step=1), (1, 5, 64, 64, 1))


def test_folder_errors_name_the_problem(tmp_path):
  with pytest.raises(UserError, match="no such directory"):
    data.get_spec(f"folder:{tmp_path}/missing")
  (tmp_path / "readme.txt").write_text("no images here")
  with pytest.raises(UserError, match="no training images"):
    data.get_spec(f"folder:{tmp_path}")


def test_unknown_dataset_lists_the_valid_ones():
  with pytest.raises(UserError) as e:
    data.get_spec("imagenet")
  for name in ("mnist", "cifar10", "svhn", "celeba", "digits", "folder:PATH"):
    assert name in str(e.value)


def closed_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_unprepared_tfds_dataset_fails_fast_with_instructions(tmp_path):
  """Offline: a clear error within seconds (a plain tfds.load retries ~200 s).

  The network probe is pointed at a closed local port, so the test never
  touches the network, yet takes the same path as a machine without one.
  """
  began = time.time()
  with pytest.raises(UserError) as e:
    data.load_tfds("cifar10", "train", data_dir=str(tmp_path), download=True,
                   probe=("127.0.0.1", closed_port()))
  assert time.time() - began < 10
  message = str(e.value)
  assert "cifar10" in message and str(tmp_path) in message
  assert "cannot be downloaded" in message and "download_and_prepare()" in message
  with pytest.raises(UserError, match="--nodownload"):
    data.load_tfds("cifar10", "train", data_dir=str(tmp_path), download=False)


def test_uint8_float_round_trip():
  x = tf.constant(np.arange(256, dtype=np.uint8))
  np.testing.assert_array_equal(data.to_uint8(data.to_float(x)), x)
  assert float(data.to_float(x)[0]) == -1.0 and float(data.to_float(x)[-1]) == 1.0
