"""An export loaded and run by TensorFlow's C++ loader, as TF Serving loads it, and its warm-up file.

export/saved_model_check.cc, built by export/build.sh against the
TensorFlow pip wheel's headers and C++ libraries, loads a version directory
with tensorflow::LoadSavedModel (tag "serve"), the call TF Serving's model
server makes, and runs signatures as TF Serving's Predict does. Here it
lists and runs every signature of a small AGE export (untrained, with
random BatchNorm statistics: the check is of the export, not of training),
is compared with the Keras models and Python's tf.saved_model.load, and
replays the version's assets.extra/tf_serving_warmup_requests.

The binary is compiled once per session (about a minute on a 2-core CPU,
side by side with the export). Without a C++ compiler, or with a TensorFlow
that has no C++ headers, the tests skip, saying why; AGE_TF_REQUIRE_CXX=1
(CI sets it) makes that a failure.
"""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from age_tf import config as config_lib
from age_tf import export
from age_tf.methods import METHODS

from conftest import ROOT

BUILD_SCRIPT = os.path.join(ROOT, "export", "build.sh")
SIGNATURES = ("encode", "encode_uint8", "generate", "generate_uint8", "reconstruct", "sample",
              "serving_default")
BATCH = 5
TOLERANCE = 1e-5
RUN_TIMEOUT = 300


def toolchain_problem():
  """Why the C++ program cannot be built here (None when it can)."""
  compiler = os.environ.get("CXX", "g++")
  if not shutil.which(compiler):
    return f"no C++ compiler {compiler!r} on PATH (Debian: apt-get install g++)"
  include, lib = tf.sysconfig.get_include(), tf.sysconfig.get_lib()
  if not os.path.isfile(os.path.join(include, "tensorflow", "cc", "saved_model", "loader.h")):
    return f"TensorFlow {tf.__version__} has no C++ headers in {include}"
  for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2"):
    if not os.path.isfile(os.path.join(lib, name)):
      return f"TensorFlow {tf.__version__} has no {name} in {lib}"
  return None


def run_check(binary, *args):
  """saved_model_check ARGS; returns the CompletedProcess."""
  return subprocess.run([binary, *map(str, args)], capture_output=True, text=True,
                        timeout=RUN_TIMEOUT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))


def error_line(result):
  """The program's one `error:` line (its failures end with one)."""
  errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  return errors[0]


def signature_defs(saved_model_dir):
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  (meta_graph,) = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
  return {k: v for k, v in meta_graph.signature_def.items() if not k.startswith("__")}


def assert_matches(got, want, what):
  assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, got.shape,
                                                               want.dtype, want.shape)
  if want.dtype == np.uint8:  # rounding at .5 boundaries may differ by one level
    diff = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert diff.max() <= 1 and np.mean(diff > 0) < 0.01, what
  else:
    np.testing.assert_allclose(got, want, atol=TOLERANCE, rtol=0, err_msg=what)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def build(tmp_path_factory):
  """Starts export/build.sh in the background; returns a function that waits for the binary."""
  problem = toolchain_problem()
  if problem:
    if os.environ.get("AGE_TF_REQUIRE_CXX") == "1":
      pytest.fail(problem + "; AGE_TF_REQUIRE_CXX=1 requires the C++ check")
    pytest.skip(problem)
  binary = str(tmp_path_factory.mktemp("saved_model_check") / "saved_model_check")
  process = subprocess.Popen([BUILD_SCRIPT, binary], env=dict(os.environ, PYTHON=sys.executable),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

  def wait():
    output, _ = process.communicate(timeout=900)
    assert process.returncode == 0, f"export/build.sh failed:\n{output[-8000:]}"
    return binary

  return wait


@pytest.fixture(scope="module")
def case(build, tmp_path_factory):
  """A small AGE digits export (random weights and BatchNorm statistics), its inputs and the
  Keras models' outputs on them, as .npy files; exported while the binary compiles."""
  directory = tmp_path_factory.mktemp("serving_cpp")
  config = config_lib.resolve({"method": "age", "dataset": "digits", "width": 8,
                               "model_dir": str(directory / "run")})
  model = METHODS[config.method].create(config)
  rng = np.random.default_rng(0)
  for variable in model.encoder.non_trainable_variables + model.generator.non_trainable_variables:
    low, high = (0.5, 1.5) if variable.path.endswith("moving_variance") else (-0.2, 0.2)
    variable.assign(rng.uniform(low, high, variable.shape).astype(np.float32))
  version_dir = export.write_export(model, config, 0, str(directory / "serving"))

  m, shape = config.latent_dim, (config.image_size, config.image_size, config.channels)
  images = rng.uniform(-1, 1, (BATCH, *shape)).astype(np.float32)
  pixels = rng.integers(0, 256, (BATCH, *shape)).astype(np.uint8)
  noise = rng.standard_normal((BATCH, m)).astype(np.float32)
  codes = noise / np.linalg.norm(noise, axis=1, keepdims=True)  # the sphere prior's draws
  assert config.prior == "sphere"

  def encode(x):
    return model.encoder(tf.constant(x, tf.float32), training=False).numpy()

  def generate(z):
    return model.generator(tf.constant(z), training=False).numpy()

  def to_uint8(x):
    return np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)

  keras = {
      "encode": ("images", images, {"codes": encode(images)}),
      "encode_uint8": ("images", pixels, {"codes": encode(pixels / 127.5 - 1.0)}),
      "generate": ("codes", codes[::-1].copy(), {"images": generate(codes[::-1].copy())}),
      "generate_uint8": ("codes", codes, {"images": to_uint8(generate(codes))}),
      "reconstruct": ("images", images, {"reconstructions": generate(encode(images))}),
      "sample": ("noise", noise, {"codes": codes, "images": generate(codes)}),
      "serving_default": ("codes", codes, {"images": generate(codes)}),
  }
  inputs = {}
  for name, (key, array, _) in keras.items():
    inputs[name] = (key, str(directory / f"{name}_{key}.npy"))
    np.save(inputs[name][1], array)
  return dict(export=version_dir, keras=keras, inputs=inputs, directory=directory,
              latent_dim=m, image_shape=shape, binary=build())


@pytest.fixture(scope="module")
def loaded(case):
  """Python's loader on the same export."""
  return tf.saved_model.load(case["export"])


@pytest.fixture(scope="module")
def runs(case):
  """{signature: (CompletedProcess, output directory)}: saved_model_check --run on each."""
  results = {}
  for name in SIGNATURES:
    key, path = case["inputs"][name]
    outputs = case["directory"] / "cpp_outputs" / name
    results[name] = (run_check(case["binary"], case["export"], f"--run={name}",
                               f"--input={key}={path}", f"--output_dir={outputs}"), outputs)
  return results


@pytest.fixture(scope="module")
def warmup_records(case):
  path = os.path.join(case["export"], "assets.extra", "tf_serving_warmup_requests")
  assert os.path.isfile(path), f"the export has no warm-up file {path}"
  return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
          for record in tf.data.TFRecordDataset(path)]


# ---------------------------------------------------------------- the C++ loader


def test_build_script_says_why_without_a_compiler(tmp_path):
  result = subprocess.run([BUILD_SCRIPT, str(tmp_path / "x")], capture_output=True, text=True,
                          env=dict(os.environ, CXX="no-such-compiler++"), timeout=60)
  assert result.returncode == 1
  assert "error: no C++ compiler 'no-such-compiler++'" in result.stderr
  assert not os.path.exists(tmp_path / "x")


def test_loads_with_tag_serve_and_lists_every_signature(case):
  result = run_check(case["binary"], case["export"])
  assert result.returncode == 0, result.stderr[-5000:]
  out = result.stdout
  assert f"loaded {case['export']} (tags {{serve}})" in out
  assert "7 signatures\n" in out
  listed = {}
  for block in out.split("signature ")[1:]:
    name, rest = block.split(": method ", 1)
    lines = rest.splitlines()
    listed[name] = (lines[0], lines[1:])
  definitions = signature_defs(case["export"])
  assert sorted(listed) == sorted(definitions) == sorted(SIGNATURES)
  for name, definition in definitions.items():
    method, lines = listed[name]
    assert method == definition.method_name == "tensorflow/serving/predict", name
    want = []
    for side, infos in (("input", definition.inputs), ("output", definition.outputs)):
      for alias in sorted(infos):
        info = infos[alias]
        dims = [d.size for d in info.tensor_shape.dim]
        shape = "(" + ", ".join(map(str, dims)) + ")"
        want.append(f"  {side} {alias}: {tf.as_dtype(info.dtype).name} {shape} "
                    f"(tensor {info.name})")
    assert lines == want, name
  m, (h, w, c) = case["latent_dim"], case["image_shape"]
  assert f"  input codes: float32 (-1, {m})" in out
  assert f"  output images: uint8 (-1, {h}, {w}, {c})" in out


def test_every_signature_runs_as_the_keras_models_and_python_loader(case, runs, loaded):
  for name in SIGNATURES:
    result, outputs = runs[name]
    assert result.returncode == 0, (name, result.stderr[-5000:])
    key, array, keras_outputs = case["keras"][name]
    python = {k: v.numpy() for k, v in loaded.signatures[name](**{key: tf.constant(array)}).items()}
    assert sorted(os.listdir(outputs)) == sorted(f"{k}.npy" for k in keras_outputs), name
    assert sorted(python) == sorted(keras_outputs), name
    for output, want in keras_outputs.items():
      got = np.load(outputs / f"{output}.npy")
      assert f"  output {output}: {got.dtype.name} {tuple(got.shape)} -> " in result.stdout, name
      assert_matches(got, want.astype(got.dtype), f"{name}/{output} against Keras")
      assert_matches(got, python[output], f"{name}/{output} against tf.saved_model.load")


def test_timing_mode_reports_the_median_over_the_runs(case):
  key, path = case["inputs"]["generate"]
  result = run_check(case["binary"], case["export"], "--run=generate", f"--input={key}={path}",
                     "--repeat=5")
  assert result.returncode == 0, result.stderr[-5000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("timing ")]
  values = dict(item.split("=") for item in line.split()[1:])
  assert values["signature"] == "generate" and values["batch"] == str(BATCH)
  assert values["runs"] == "5"
  assert 0 < float(values["min_ms"]) <= float(values["median_ms"]) <= float(values["max_ms"])
  assert float(values["examples_per_s"]) == pytest.approx(
      BATCH / (float(values["median_ms"]) / 1000), rel=1e-2)


def wrong_inputs(m, h, w, c):
  """{label: (signature, input, array, the message TF Serving would return)}."""
  shape_message = "age_tf export: input {} must have shape (batch, {}); got shape"
  return {
      "codes (2, M+1)": ("generate", "codes", np.zeros((2, m + 1), np.float32),
                         shape_message.format("codes", m) + "] [2 " + str(m + 1) + "]"),
      "codes (M,)": ("generate_uint8", "codes", np.zeros((m,), np.float32),
                     shape_message.format("codes", m) + "] [" + str(m) + "]"),
      "images (2, H, W, C+2)": ("encode", "images", np.zeros((2, h, w, c + 2), np.float32),
                                shape_message.format("images", f"{h}, {w}, {c}")),
      "pixels (2, 2H, 2W, C)": ("encode_uint8", "images",
                                np.zeros((2, 2 * h, 2 * w, c), np.uint8),
                                shape_message.format("images", f"{h}, {w}, {c}")),
      "noise (2, M, 1)": ("sample", "noise", np.zeros((2, m, 1), np.float32),
                          shape_message.format("noise", m)),
      "codes float64": ("generate", "codes", np.zeros((2, m), np.float64),
                        "Expects arg[0] to be float but double is provided"),
      "images uint8 to encode": ("encode", "images", np.zeros((2, h, w, c), np.uint8),
                                 "Expects arg[0] to be float but uint8 is provided"),
      "images float32 to encode_uint8": ("encode_uint8", "images",
                                         np.zeros((2, h, w, c), np.float32),
                                         "Expects arg[0] to be uint8 but float is provided"),
      "unknown input": ("generate", "noise", np.zeros((2, m), np.float32),
                        "input tensor alias not found in signature: noise. Inputs expected to "
                        "be in the set {codes}."),
      "unknown signature": ("decode", "codes", np.zeros((2, m), np.float32),
                            'Serving signature key "decode" not found.'),
  }


def test_wrong_shapes_and_dtypes_fail_with_the_signatures_own_message(case, tmp_path):
  for label, (name, key, array, message) in wrong_inputs(
      case["latent_dim"], *case["image_shape"]).items():
    path = tmp_path / f"{len(os.listdir(tmp_path))}.npy"
    np.save(path, array)
    result = run_check(case["binary"], case["export"], f"--run={name}", f"--input={key}={path}")
    assert result.returncode == 1, (label, result.stdout, result.stderr[-3000:])
    assert message in error_line(result), (label, error_line(result))


def test_usage_errors_exit_2(case):
  result = run_check(case["binary"], case["export"], "--run=generate")
  assert result.returncode == 2 and "--run needs --input" in error_line(result)
  result = run_check(case["binary"], case["export"], "--frobnicate")
  assert result.returncode == 2 and "unknown flag --frobnicate" in error_line(result)


def test_a_directory_without_a_saved_model_fails_to_load(case, tmp_path):
  result = run_check(case["binary"], tmp_path)
  assert result.returncode == 1
  assert error_line(result).startswith(f"error: LoadSavedModel({tmp_path}, tags {{serve}}): ")


# ---------------------------------------------------------------- TF Serving's warm-up


def test_every_version_carries_one_warmup_request_per_signature(case, warmup_records):
  definitions = signature_defs(case["export"])
  names = [r.predict_log.request.model_spec.signature_name for r in warmup_records]
  assert sorted(names) == sorted(definitions) == sorted(SIGNATURES)
  for record in warmup_records:
    assert record.WhichOneof("log_type") == "predict_log"
    request = record.predict_log.request
    definition = definitions[request.model_spec.signature_name]
    assert set(request.inputs) == set(definition.inputs)
    for key, tensor in request.inputs.items():
      info = definition.inputs[key]
      assert tensor.dtype == info.dtype
      value = tf.make_ndarray(tensor)
      assert list(value.shape) == [1] + [d.size for d in info.tensor_shape.dim[1:]]
      if value.dtype == np.float32 and key == "images":
        assert -1 <= value.min() and value.max() <= 1
    # The hand-encoded bytes are what tensorflow-serving-api itself writes.
    rebuilt = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
        request=predict_pb2.PredictRequest(inputs=request.inputs)))
    rebuilt.predict_log.request.model_spec.signature_name = request.model_spec.signature_name
    assert rebuilt.SerializeToString(deterministic=True) == record.SerializeToString(
        deterministic=True)
  # Deterministic: every export writes the same requests.
  again = case["directory"] / "again"
  again.mkdir()
  metadata = export.read_metadata(case["export"])
  (again / "assets.extra").mkdir()
  export.write_warmup_requests(str(again), metadata["signatures"])
  with open(again / "assets.extra" / "tf_serving_warmup_requests", "rb") as f, \
      open(os.path.join(case["export"], "assets.extra", "tf_serving_warmup_requests"), "rb") as g:
    assert f.read() == g.read()


def test_cpp_loader_replays_the_warmup_requests_as_python_runs_them(case, warmup_records, loaded):
  outputs = case["directory"] / "warmup_outputs"
  result = run_check(case["binary"], case["export"], "--warmup", f"--output_dir={outputs}")
  assert result.returncode == 0, result.stderr[-5000:]
  assert f"warm-up: {len(SIGNATURES)} records replayed" in result.stdout
  written = set(os.listdir(outputs))
  expected_files = set()
  for index, record in enumerate(warmup_records):
    request = record.predict_log.request
    name = request.model_spec.signature_name
    assert f"record {index}: signature {name}\n" in result.stdout
    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    python = loaded.signatures[name](**{k: tf.constant(v) for k, v in inputs.items()})
    for output, want in python.items():
      file = f"{index}_{name}_{output}.npy"
      expected_files.add(file)
      assert file in written, (file, sorted(written))
      assert_matches(np.load(outputs / file), want.numpy(), f"warm-up {name}/{output}")
  assert written == expected_files


def test_warmup_replay_fails_on_a_missing_file_or_a_bad_record(case, tmp_path):
  version = tmp_path / "1"
  shutil.copytree(case["export"], version)
  warmup = version / "assets.extra" / "tf_serving_warmup_requests"
  warmup.unlink()
  result = run_check(case["binary"], version, "--warmup")
  assert result.returncode == 1 and "no warm-up file" in error_line(result)

  log = prediction_log_pb2.PredictionLog()
  log.predict_log.request.model_spec.signature_name = "decoder"
  log.predict_log.request.inputs["codes"].CopyFrom(
      tf.make_tensor_proto(np.zeros((1, case["latent_dim"]), np.float32)))
  with tf.io.TFRecordWriter(str(warmup)) as writer:
    writer.write(log.SerializeToString())
  result = run_check(case["binary"], version, "--warmup")
  assert result.returncode == 1
  assert 'record 0: Serving signature key "decoder" not found.' in error_line(result)

  with open(warmup, "r+b") as f:  # a flipped byte: TFRecord's CRC catches it
    f.seek(20)
    byte = f.read(1)
    f.seek(20)
    f.write(bytes([byte[0] ^ 0xFF]))
  result = run_check(case["binary"], version, "--warmup")
  assert result.returncode == 1 and "record 0" in error_line(result)
  assert re.search(r"corrupt|checksum|crc", error_line(result), re.IGNORECASE), error_line(result)


# ---------------------------------------------------------------- TF Serving's batching


def batching_parameters():
  """TF Serving's BatchingParameters message (session_bundle_config.proto; not in the pip
  package), built from its field numbers and types."""
  from google.protobuf import descriptor_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf import descriptor_pool
  from google.protobuf import message_factory
  from google.protobuf import wrappers_pb2
  field = descriptor_pb2.FieldDescriptorProto
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  file = descriptor_pb2.FileDescriptorProto(
      name="session_bundle_config.proto", package="tensorflow.serving", syntax="proto3",
      dependency=["google/protobuf/wrappers.proto"])
  message = file.message_type.add(name="BatchingParameters")
  for name, number in [("max_batch_size", 1), ("batch_timeout_micros", 2),
                       ("num_batch_threads", 3), ("max_enqueued_batches", 4)]:
    message.field.add(name=name, number=number, type=field.TYPE_MESSAGE,
                      type_name=".google.protobuf.Int64Value", label=field.LABEL_OPTIONAL)
  message.field.add(name="thread_pool_name", number=8, type=field.TYPE_MESSAGE,
                    type_name=".google.protobuf.StringValue", label=field.LABEL_OPTIONAL)
  message.field.add(name="allowed_batch_sizes", number=6, type=field.TYPE_INT64,
                    label=field.LABEL_REPEATED)
  message.field.add(name="pad_variable_length_inputs", number=7, type=field.TYPE_BOOL,
                    label=field.LABEL_OPTIONAL)
  pool.Add(file)
  return message_factory.GetMessageClass(
      pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def test_batching_config_is_valid_batching_parameters():
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "export", "batching.config")) as f:
    text = f.read()
  config = text_format.Parse(text, batching_parameters()())
  for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads",
               "max_enqueued_batches"):
    assert config.HasField(name) and getattr(config, name).value > 0, name
  assert config.max_batch_size.value == 64  # benchmarks/serving.py's throughput batch
  assert config.batch_timeout_micros.value <= 10_000  # a few ms at most: online serving
  assert "--batching_parameters_file" in text  # says how to use it
