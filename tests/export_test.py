"""SavedModel export: signatures run by TensorFlow alone, saved_model_cli, the serving client, versions.

No TF Serving server can be installed on this project's machines, so the
server side is stood in for by the SavedModel itself: the client's requests
are checked against the exported SignatureDefs and executed by small
in-process REST and gRPC servers that call the loaded signatures as TF
Serving does.
"""

import ast
import concurrent.futures
import http.server
import importlib.util
import json
import os
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from google.protobuf import json_format
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc
from tensorflow_serving.config import model_server_config_pb2

import age_tf
from age_tf import checkpointing
from age_tf import config as config_lib
from age_tf import export
from age_tf import inference_statistics
from age_tf import train
from age_tf.errors import UserError

from conftest import ROOT, start_module

SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
CLIENT_PATH = os.path.join(ROOT, "export", "client.py")
SIGNATURES = ("encode", "generate", "reconstruct", "sample", "encode_uint8", "generate_uint8",
              "serving_default")
# Short runs: the export needs trained variables, not a trained model.
SHORT = ("--dataset=digits", "--width=8", "--batch_size=16", "--steps_per_loop=5",
         "--log_every=5", "--image_every=10", "--checkpoint_every=10")
STEPS = {"age": 10, "gali4": 10}
BATCH = 5
TOLERANCE = 1e-5


def load_client():
  spec = importlib.util.spec_from_file_location("age_tf_export_client", CLIENT_PATH)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


client = load_client()


def signature_defs(saved_model_dir):
  """The exported SignatureDef protos, read with TensorFlow's own proto (not the client's reader)."""
  saved_model = saved_model_pb2.SavedModel()
  with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
    saved_model.ParseFromString(f.read())
  (meta_graph,) = [m for m in saved_model.meta_graphs if "serve" in m.meta_info_def.tags]
  return dict(meta_graph.signature_def)


def numpy_dtype(enum):
  return np.dtype(tf.as_dtype(enum).as_numpy_dtype)


def example_input(definition, batch, rng):
  """An input array built from a SignatureDef: its one input's dtype and shape, batch rows."""
  (info,) = definition.inputs.values()
  shape = [batch] + [d.size for d in info.tensor_shape.dim[1:]]
  if info.dtype == tf.uint8.as_datatype_enum:
    return rng.integers(0, 256, shape).astype(np.uint8)
  return rng.uniform(-1, 1, shape).astype(numpy_dtype(info.dtype))


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """A short AGE run, exported by training itself, and a GALI-4 run with --noexport, exported here.

  AGE trains in `python -m age_tf.train`; GALI-4 meanwhile in this process,
  through the same entry point (train.main on parsed flags), which saves a
  TensorFlow start.
  """
  base = tmp_path_factory.mktemp("export_runs")
  age = start_module("age_tf.train", "--method=age", f"--train_steps={STEPS['age']}",
                     f"--model_dir={base / 'age'}", *SHORT)
  try:
    flags.FLAGS(["export_test", "--method=gali4", f"--train_steps={STEPS['gali4']}",
                 f"--model_dir={base / 'gali4'}", *SHORT, "--noexport"])
    train.main(["export_test"])
  finally:
    flags.FLAGS.unparse_flags()  # leave the shared flags as other tests expect them
    _, stderr = age.communicate(timeout=600)
  assert age.returncode == 0, stderr[-5000:]
  gali4_export = export.export_model(str(base / "gali4"), str(base / "serving" / "gali4"))
  return {"age": (str(base / "age"), os.path.join(str(base / "age"), "export", "1")),
          "gali4": (str(base / "gali4"), gali4_export)}


@pytest.fixture(scope="module")
def expected(runs, tmp_path_factory):
  """Inputs for every signature and the Keras models' outputs on them, saved as .npy files.

  Computed from the networks directly (not through the methods' encode), so
  a stochastic encoder's exported `encode` must return the mean half of its
  output. The networks are the checkpoint's with the statistics the export
  serves (the run's --bn_statistics, recompute by default: reconstruct's
  generator has the statistics of encodings; see inference_statistics_test.py
  for the statistics themselves).
  """
  directory = tmp_path_factory.mktemp("expected")
  rng = np.random.default_rng(0)
  cases = {}
  for method, (model_dir, export_dir) in runs.items():
    config, model, step, statistics = inference_statistics.load_served_model(model_dir)
    m = config.latent_dim
    shape = (config.image_size, config.image_size, config.channels)

    def encoder_mean(images, model=model, m=m):
      outputs = model.encoder(tf.constant(images), training=False).numpy()
      assert outputs.shape[1] == (2 * m if config.method != "age" else m)
      return outputs[:, :m]

    def generator(codes, model=model):
      return model.generator(tf.constant(codes), training=False).numpy()

    def reconstruct_generator(codes, model=model):  # the generator with encodings' statistics
      network = model.reconstruction_generator
      assert network is not None
      return network(tf.constant(codes), training=False).numpy()

    images = rng.uniform(-1, 1, (BATCH, *shape)).astype(np.float32)
    pixels = rng.integers(0, 256, (BATCH, *shape)).astype(np.uint8)
    noise = rng.standard_normal((BATCH, m)).astype(np.float32)
    prior_codes = noise / np.linalg.norm(noise, axis=1, keepdims=True) \
        if config.prior == "sphere" else noise
    codes = prior_codes[::-1].copy()
    generated = generator(codes)
    values = {
        "encode": ("images", images, {"codes": encoder_mean(images)}),
        "generate": ("codes", codes, {"images": generated}),
        "serving_default": ("codes", codes, {"images": generated}),
        "reconstruct": ("images", images,
                        {"reconstructions": reconstruct_generator(encoder_mean(images))}),
        "sample": ("noise", noise, {"codes": prior_codes, "images": generator(prior_codes)}),
        "encode_uint8": ("images", pixels, {"codes": encoder_mean(pixels / 127.5 - 1.0)}),
        "generate_uint8": ("codes", codes, {"images": np.clip(
            np.round((generated + 1.0) * 127.5), 0, 255).astype(np.uint8)}),
    }
    signatures = {}
    for name, (key, array, outputs) in values.items():
      files = {}
      for label, value in [("input", array), *outputs.items()]:
        files[label] = str(directory / f"{method}_{name}_{label}.npy")
        np.save(files[label], value)
      signatures[name] = {"input": [key, files.pop("input")], "outputs": files}
    cases[method] = dict(method=method, export=export_dir, model_dir=model_dir, step=step,
                         config=config, model=model, image_shape=list(shape), latent_dim=m,
                         signatures=signatures, codes=codes, images=images,
                         statistics=statistics)
  return cases


FRESH_PROCESS_SCRIPT = r'''
import importlib.util, json, os, sys
import numpy as np
result = {}
try:
  import age_tf  # noqa
  result["age_tf_importable"] = True
except ImportError:
  result["age_tf_importable"] = False
import tensorflow as tf

manifest = json.load(open(sys.argv[1]))
for case in manifest["cases"]:
  loaded = tf.saved_model.load(case["export"])
  r = result[case["method"]] = {
      "signatures": sorted(loaded.signatures), "outputs": {}, "batch1": {}, "max_error": {},
      "uint8_off_by_one": {}, "rejected": {},
      "metadata": json.loads(loaded.metadata[0].numpy().decode())}
  for name, spec in case["signatures"].items():
    key, path = spec["input"]
    x = np.load(path)
    outputs = loaded.signatures[name](**{key: tf.constant(x)})
    r["outputs"][name] = {k: [v.dtype.name, list(v.shape)] for k, v in outputs.items()}
    one = loaded.signatures[name](**{key: tf.constant(x[:1])})
    r["batch1"][name] = {k: list(v.shape) for k, v in one.items()}
    for k, file in spec["outputs"].items():
      want, got = np.load(file), outputs[k].numpy()
      diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
      if want.dtype == np.uint8:  # rounding at .5 boundaries may differ by one level
        r["uint8_off_by_one"][f"{name}/{k}"] = float(np.mean(diff > 0))
      r["max_error"][f"{name}/{k}"] = float(diff.max())
  for label, (name, key, shape, dtype) in case["bad"].items():
    try:
      loaded.signatures[name](**{key: tf.zeros(shape, dtype)})
      r["rejected"][label] = None
    except Exception as e:  # pylint: disable=broad-except
      r["rejected"][label] = f"{type(e).__name__}: {e}"

# The client's offline mode, in this process too.
spec = importlib.util.spec_from_file_location("client", manifest["client"])
client = importlib.util.module_from_spec(spec)
spec.loader.exec_module(client)
result["client_rc"] = client.main(["--saved_model", manifest["cases"][0]["export"],
                                   "--generate", "16", "--seed", "7",
                                   "--out", manifest["png"]])
result["age_tf_loaded"] = any(m.split(".")[0] == "age_tf" for m in sys.modules)
print("RESULT " + json.dumps(result))
'''


def wrong_inputs(m, h, w, c):
  """{label: ((signature, input, shape, dtype), what is wrong)} for latent dim m, images h x w x c."""
  return {
      "generate: codes (2, M+1)": (("generate", "codes", [2, m + 1], "float32"), "shape"),
      "generate: codes (2, M, 1)": (("generate", "codes", [2, m, 1], "float32"), "shape"),
      "generate: codes (M,)": (("generate", "codes", [m], "float32"), "shape"),
      "generate: codes float64": (("generate", "codes", [2, m], "float64"), "dtype"),
      "encode: images (2, 2H, 2W, C)": (("encode", "images", [2, 2 * h, 2 * w, c], "float32"),
                                        "shape"),
      "encode: images (2, H, W, C+2)": (("encode", "images", [2, h, w, c + 2], "float32"),
                                        "shape"),
      "encode: images uint8": (("encode", "images", [2, h, w, c], "uint8"), "dtype"),
      "encode_uint8: images float32": (("encode_uint8", "images", [2, h, w, c], "float32"),
                                       "dtype"),
      "reconstruct: images (H, W, C)": (("reconstruct", "images", [h, w, c], "float32"),
                                        "shape"),
      "sample: noise int32": (("sample", "noise", [2, m], "int32"), "dtype"),
  }


@pytest.fixture(scope="module")
def processes(expected, tmp_path_factory):
  """The checks that need a process of their own, run side by side (each imports TensorFlow).

  fresh: FRESH_PROCESS_SCRIPT in `python -I` from a directory outside the
  repository; show / run: saved_model_cli on the AGE export; no_checkpoint:
  `python -m age_tf.export` on a directory without a trained model.
  Returns {name: CompletedProcess-like (returncode, stdout, stderr)} and the paths used.
  """
  directory = tmp_path_factory.mktemp("processes")
  cases = []
  for case in expected.values():
    m, (h, w, c) = case["latent_dim"], case["image_shape"]
    bad = {label: spec for label, (spec, _) in wrong_inputs(m, h, w, c).items()}
    cases.append({k: case[k] for k in ("method", "export", "signatures")} | {"bad": bad})
  manifest = directory / "manifest.json"
  manifest.write_text(json.dumps({"cases": cases, "client": CLIENT_PATH,
                                  "png": str(directory / "offline_samples.png")}))
  script = directory / "check_export.py"
  script.write_text(FRESH_PROCESS_SCRIPT)
  age = expected["age"]
  empty = directory / "untrained"
  empty.mkdir()
  no_python_path = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
  commands = {
      "fresh": ([sys.executable, "-I", str(script), str(manifest)], directory, no_python_path),
      "show": ([SAVED_MODEL_CLI, "show", "--dir", age["export"], "--all"], directory, None),
      "run": ([SAVED_MODEL_CLI, "run", "--dir", age["export"], "--tag_set", "serve",
               "--signature_def", "generate", "--inputs",
               f"codes={age['signatures']['generate']['input'][1]}",
               "--outdir", str(directory / "cli_outputs")], directory, None),
  }
  running = {name: subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (command, cwd, env) in commands.items()}
  running["no_checkpoint"] = start_module("age_tf.export", f"--model_dir={empty}",
                                          f"--export_dir={empty / 'serving'}")
  results = {}
  for name, process in running.items():
    stdout, stderr = process.communicate(timeout=600)
    results[name] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
  return results, directory, empty


@pytest.fixture(scope="module")
def fresh_process(processes):
  """The fresh process's findings (JSON it printed) and the PNG the client wrote there."""
  results, directory, _ = processes
  result = results["fresh"]
  assert result.returncode == 0, result.stderr[-5000:]
  (line,) = [l for l in result.stdout.splitlines() if l.startswith("RESULT ")]
  return json.loads(line[len("RESULT "):]), directory / "offline_samples.png"


# ---------------------------------------------------------------- the SavedModel


def test_tensorflow_alone_runs_every_signature_as_the_keras_models(expected, fresh_process):
  result, _ = fresh_process
  assert result["age_tf_importable"] is False  # the process could not have used age_tf
  assert result["age_tf_loaded"] is False
  for method, case in expected.items():
    r = result[method]
    assert r["signatures"] == sorted(SIGNATURES)
    for name, error in r["max_error"].items():
      if name.endswith("uint8/images"):
        assert error <= 1 and r["uint8_off_by_one"][name] < 0.01, (method, name)
      else:
        assert error <= TOLERANCE, (method, name, error)
    m, shape = case["latent_dim"], case["image_shape"]
    documented = {
        "encode": {"codes": ["float32", [BATCH, m]]},
        "encode_uint8": {"codes": ["float32", [BATCH, m]]},
        "generate": {"images": ["float32", [BATCH, *shape]]},
        "serving_default": {"images": ["float32", [BATCH, *shape]]},
        "generate_uint8": {"images": ["uint8", [BATCH, *shape]]},
        "reconstruct": {"reconstructions": ["float32", [BATCH, *shape]]},
        "sample": {"codes": ["float32", [BATCH, m]], "images": ["float32", [BATCH, *shape]]},
    }
    assert r["outputs"] == documented, method
    for name, outputs in r["batch1"].items():  # a free batch dimension
      assert all(s[0] == 1 for s in outputs.values()), (method, name)


def test_stochastic_encoder_exports_its_mean(expected, fresh_process):
  result, _ = fresh_process
  assert expected["gali4"]["config"].method == "gali4"
  assert result["gali4"]["max_error"]["encode/codes"] <= TOLERANCE  # the mean half, see expected
  assert result["gali4"]["max_error"]["reconstruct/reconstructions"] <= TOLERANCE


def test_wrong_shapes_and_dtypes_are_rejected_clearly(expected, fresh_process):
  result, _ = fresh_process
  for method, case in expected.items():
    wrong = wrong_inputs(case["latent_dim"], *case["image_shape"])
    assert set(result[method]["rejected"]) == set(wrong)
    for label, message in result[method]["rejected"].items():
      assert message is not None, f"{method}: {label} was accepted"
      (_, key, _, dtype), kind = wrong[label]
      if kind == "dtype":  # e.g. "... input #0 was expected to be a float tensor but is a double"
        assert "expected to be a" in message and "but is a" in message, (label, message)
      else:  # the export's own in-graph check
        assert f"input {key} must have shape (batch," in message, (label, message)


def test_metadata_describes_the_run(expected, fresh_process):
  result, _ = fresh_process
  for method, case in expected.items():
    from_file = export.read_metadata(case["export"])
    with open(os.path.join(case["export"], "assets.extra", "age_tf_metadata.json")) as f:
      assert json.load(f) == from_file  # plain JSON, no TensorFlow needed
    assert result[method]["metadata"] == from_file  # the same as the loaded `metadata` variable
    config = case["config"]
    assert from_file["method"] == method and from_file["dataset"] == "digits"
    assert from_file["image_shape"] == case["image_shape"] == [32, 32, 1]
    assert from_file["latent_dim"] == config.latent_dim
    assert from_file["prior"] == config.prior == ("sphere" if method == "age" else "gaussian")
    assert from_file["step"] == case["step"] == STEPS[method]
    assert from_file["bn_statistics"] == case["statistics"]
    assert case["statistics"]["mode"] == "recompute"
    assert from_file["age_tf_version"] == age_tf.__version__
    assert from_file["tensorflow_version"] == tf.__version__
    assert from_file["version"] == 1
    assert sorted(from_file["signatures"]) == sorted(SIGNATURES)
    assert from_file["signatures"]["generate_uint8"] == {
        "inputs": {"codes": {"dtype": "float32", "shape": [-1, config.latent_dim]}},
        "outputs": {"images": {"dtype": "uint8", "shape": [-1, 32, 32, 1]}}}


def test_saved_model_cli_shows_and_runs_the_signatures(expected, processes):
  results, directory, _ = processes
  case = expected["age"]
  assert results["show"].returncode == 0, results["show"].stderr[-3000:]
  assert results["run"].returncode == 0, results["run"].stderr[-3000:]
  shown = results["show"].stdout

  # saved_model_cli runs the SavedModel through the session-based loader, as
  # TF Serving's C++ loader does.
  np.testing.assert_allclose(np.load(directory / "cli_outputs" / "images.npy"),
                             np.load(case["signatures"]["generate"]["outputs"]["images"]),
                             atol=TOLERANCE)
  blocks = {}
  for block in shown.split("signature_def['")[1:]:
    blocks[block.split("'")[0]] = block
  for name in SIGNATURES:
    assert "Method name is: tensorflow/serving/predict" in blocks[name], name
  assert "inputs['codes']" in blocks["generate"] and "outputs['images']" in blocks["generate"]
  assert "shape: (-1, 10)" in blocks["generate"]
  assert "shape: (-1, 32, 32, 1)" in blocks["generate"]
  assert "dtype: DT_UINT8" in blocks["encode_uint8"] and "DT_UINT8" in blocks["generate_uint8"]
  assert "inputs['codes']" in blocks["serving_default"]  # serving_default is generate
  assert "outputs['images']" in blocks["serving_default"]


# ---------------------------------------------------------------- the client


def test_client_requests_match_the_exported_signature_definitions(expected):
  rng = np.random.default_rng(1)
  for case in expected.values():
    definitions = signature_defs(case["export"])
    # What TF Serving's REST metadata returns: the same protos in JSON form.
    signatures = client.signatures_from_json(
        {k: json_format.MessageToDict(v, preserving_proto_field_name=True)
         for k, v in definitions.items()})
    assert sorted(signatures) == sorted(SIGNATURES)  # not __saved_model_init_op
    for name in SIGNATURES:
      definition = definitions[name]
      assert definition.method_name == "tensorflow/serving/predict"
      array = example_input(definition, 3, rng)
      (key,) = definition.inputs
      dims = [d.size for d in definition.inputs[key].tensor_shape.dim]
      dtype = numpy_dtype(definition.inputs[key].dtype)

      body = client.rest_request(signatures[name], array)
      assert body["signature_name"] == name
      assert len(body["instances"]) == 3
      for row, instance in zip(array, body["instances"]):
        assert set(instance) == set(definition.inputs)
        value = np.asarray(instance[key], dtype=dtype)
        assert [-1, *value.shape] == dims
        np.testing.assert_array_equal(value, row)
      json.dumps(body)  # serialisable as is

      request = client.grpc_request("age_digits", signatures[name], array, version=1)
      assert isinstance(request, predict_pb2.PredictRequest)
      assert request.model_spec.name == "age_digits" and request.model_spec.version.value == 1
      assert request.model_spec.signature_name == name
      assert set(request.inputs) == set(definition.inputs)
      tensor = request.inputs[key]
      assert tensor.dtype == definition.inputs[key].dtype
      assert [d.size for d in tensor.tensor_shape.dim][1:] == dims[1:]
      np.testing.assert_array_equal(tf.make_ndarray(tensor), array)

      wrong = np.zeros((3, *[d + 1 for d in array.shape[1:]]), array.dtype)
      with pytest.raises(client.ClientError, match=f"Signature '{name}' takes {key}"):
        client.rest_request(signatures[name], wrong)
      with pytest.raises(client.ClientError, match="takes"):
        client.grpc_request("age_digits", signatures[name], array.astype(np.float64))


class FakeServing:
  """What TF Serving does with a SavedModel's signatures, in this process (no server here)."""

  def __init__(self, name, saved_model_dir):
    self.name = name
    self.loaded = tf.saved_model.load(saved_model_dir)
    self.definitions = signature_defs(saved_model_dir)

  def predict(self, signature_name, inputs):
    name = signature_name or "serving_default"
    definition = self.definitions[name]
    tensors = {k: tf.constant(np.asarray(v, numpy_dtype(definition.inputs[k].dtype)))
               for k, v in inputs.items()}
    return {k: v.numpy() for k, v in self.loaded.signatures[name](**tensors).items()}

  def check_model(self, name, context):
    if name != self.name:
      context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Latest({name})")

  def rest_metadata(self):
    return {"model_spec": {"name": self.name, "signature_name": "", "version": "1"},
            "metadata": {"signature_def": {
                "@type": "type.googleapis.com/tensorflow.serving.SignatureDefMap",
                "signature_def": {k: json_format.MessageToDict(
                    v, preserving_proto_field_name=True) for k, v in self.definitions.items()}}}}

  def serve_rest(self):
    serving = self

    class Handler(http.server.BaseHTTPRequestHandler):
      """TF Serving's REST API for one model: metadata and row-format predict."""

      def log_message(self, *args):
        pass

      def _reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def do_GET(self):  # pylint: disable=invalid-name
        if self.path == f"/v1/models/{serving.name}/metadata":
          self._reply(200, serving.rest_metadata())
        else:
          self._reply(404, {"error": f"Servable not found for request: {self.path}"})

      def do_POST(self):  # pylint: disable=invalid-name
        if self.path != f"/v1/models/{serving.name}:predict":
          self._reply(404, {"error": f"Servable not found for request: {self.path}"})
          return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        name = body.get("signature_name", "serving_default")
        rows = body["instances"]
        if rows and isinstance(rows[0], dict):
          inputs = {k: [row[k] for row in rows] for k in rows[0]}
        else:
          (key,) = serving.definitions[name].inputs
          inputs = {key: rows}
        try:
          outputs = serving.predict(name, inputs)
        except (tf.errors.InvalidArgumentError, TypeError, ValueError, KeyError) as e:
          self._reply(400, {"error": str(e)})
          return
        if len(outputs) == 1:
          (values,) = outputs.values()
          self._reply(200, {"predictions": values.tolist()})
        else:
          count = len(next(iter(outputs.values())))
          self._reply(200, {"predictions": [{k: v[i].tolist() for k, v in outputs.items()}
                                            for i in range(count)]})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"127.0.0.1:{server.server_address[1]}"

  def serve_grpc(self):
    serving = self

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
      """TF Serving's PredictionService for one model: Predict and GetModelMetadata."""

      def Predict(self, request, context):  # pylint: disable=invalid-name
        serving.check_model(request.model_spec.name, context)
        try:
          outputs = serving.predict(request.model_spec.signature_name,
                                    {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        except (tf.errors.InvalidArgumentError, TypeError, ValueError, KeyError) as e:
          context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        response = predict_pb2.PredictResponse()
        response.model_spec.CopyFrom(request.model_spec)
        for k, v in outputs.items():
          response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
        return response

      def GetModelMetadata(self, request, context):  # pylint: disable=invalid-name
        serving.check_model(request.model_spec.name, context)
        definitions = get_model_metadata_pb2.SignatureDefMap()
        for k, v in serving.definitions.items():
          definitions.signature_def[k].CopyFrom(v)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.CopyFrom(request.model_spec)
        response.metadata["signature_def"].Pack(definitions)
        return response

    server = grpc.server(concurrent.futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def servers(expected):
  serving = FakeServing("age_digits", expected["age"]["export"])
  rest, rest_address = serving.serve_rest()
  grpc_server, grpc_address = serving.serve_grpc()
  yield {"rest": rest_address, "grpc": grpc_address}
  rest.shutdown()
  grpc_server.stop(None)


def read_png(path):
  return np.asarray(Image.open(path))


@pytest.mark.parametrize("protocol", ["rest", "grpc"])
def test_client_generates_and_reconstructs_through_a_server(protocol, servers, expected,
                                                            fresh_process, tmp_path, capsys):
  case = expected["age"]
  server = ["--server", servers[protocol], "--model", "age_digits", "--protocol", protocol]
  assert client.main(server + ["--generate", "16", "--seed", "7",
                               "--out", str(tmp_path / "samples.png")]) == 0
  samples = read_png(tmp_path / "samples.png")
  assert samples.shape == (2 * 32, 8 * 32)  # 16 grey 32x32 samples in 8 columns
  # The same noise gives the same grid as the offline mode in the fresh process.
  _, offline_png = fresh_process
  np.testing.assert_array_equal(samples, read_png(offline_png))

  images = tmp_path / "images.npy"
  np.save(images, case["images"])
  assert client.main(server + ["--reconstruct", str(images),
                               "--out", str(tmp_path / "reconstructions.png")]) == 0
  grid = read_png(tmp_path / "reconstructions.png").astype(np.int32)
  want = np.load(case["signatures"]["reconstruct"]["outputs"]["reconstructions"])
  first_reconstruction = grid[:32, 32:64]  # odd columns real, even columns reconstructed
  assert np.abs(first_reconstruction - client.to_uint8(want[0])[..., 0]).max() <= 1
  assert np.abs(grid[:32, :32] - client.to_uint8(case["images"][0])[..., 0]).max() <= 1

  assert client.main(server + ["--encode", str(images), "--out", str(tmp_path / "c.npy")]) == 0
  np.testing.assert_allclose(np.load(tmp_path / "c.npy"),
                             np.load(case["signatures"]["encode"]["outputs"]["codes"]),
                             atol=TOLERANCE)
  out = capsys.readouterr().out
  assert "16 samples (32, 32, 1)" in out and "5 real | reconstruction pairs" in out

  # A missing model is reported in one line, not a traceback.
  assert client.main(["--server", servers[protocol], "--model", "nope", "--protocol", protocol,
                      "--generate", "2", "--out", str(tmp_path / "x.png")]) == 2
  assert capsys.readouterr().err.startswith("error: ")


def test_client_lists_signatures_offline(expected, capsys):
  assert client.main(["--saved_model", expected["gali4"]["export"], "--signatures"]) == 0
  listed = capsys.readouterr().out.splitlines()
  assert [line.split(":")[0] for line in listed] == sorted(SIGNATURES)
  assert "sample: noise float32 (-1, 8) -> codes float32 (-1, 8), images float32 " \
         "(-1, 32, 32, 1)" in listed


def test_client_imports_no_age_tf():
  # The fresh process also checks that running it loads no age_tf module.
  with open(CLIENT_PATH) as f:
    tree = ast.parse(f.read())
  imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
              for alias in node.names}
  imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
  assert imported and not any(name.split(".")[0] == "age_tf" for name in imported)


def test_models_config_is_a_valid_model_server_config():
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, "export", "models.config")) as f:
    config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
  names = [c.name for c in config.model_config_list.config]
  assert names == ["age_digits", "gali4_digits"]
  assert all(c.model_platform == "tensorflow" for c in config.model_config_list.config)


# ---------------------------------------------------------------- versions and failures


def test_versions_count_up_and_are_never_overwritten(expected, tmp_path):
  case = expected["gali4"]
  args = (case["model"], case["config"], case["step"])
  export_dir = str(tmp_path / "serving")
  assert export.write_export(*args, export_dir) == os.path.join(export_dir, "1")
  assert export.write_export(*args, export_dir) == os.path.join(export_dir, "2")
  assert export.read_metadata(os.path.join(export_dir, "2"))["version"] == 2
  assert sorted(os.listdir(export_dir)) == ["1", "2"]  # no temporary directory left

  before = os.path.getmtime(os.path.join(export_dir, "2", "saved_model.pb"))
  with pytest.raises(UserError, match="Version 2 already exists .* never overwritten"):
    export.export_model(case["model_dir"], export_dir, version=2)
  assert os.path.getmtime(os.path.join(export_dir, "2", "saved_model.pb")) == before
  with pytest.raises(UserError, match="--version=0 must be a positive integer"):
    export.export_model(case["model_dir"], export_dir, version=0)
  assert export.write_export(*args, export_dir, version=7).endswith(os.sep + "7")
  assert export.versions(export_dir) == [1, 2, 7]
  assert export.choose_version(export_dir) == 8  # the next default


def test_a_failed_export_leaves_no_version_behind(expected, tmp_path, monkeypatch):
  case = expected["age"]
  export_dir = tmp_path / "serving"
  seen = {}

  def crash(saved_model_dir, metadata):
    # The SavedModel is complete on disk; the version is not yet renamed into place.
    seen["listing"] = os.listdir(export_dir)
    seen["complete"] = os.path.exists(os.path.join(saved_model_dir, "saved_model.pb"))
    raise RuntimeError("disk full")

  monkeypatch.setattr(export, "write_metadata", crash)
  with pytest.raises(RuntimeError, match="disk full"):
    export.write_export(case["model"], case["config"], case["step"], str(export_dir))
  (temporary,) = seen["listing"]
  assert seen["complete"] and not temporary.isdigit()  # TF Serving only loads all-digit names
  assert os.listdir(export_dir) == []  # and it was removed
  assert export.versions(str(export_dir)) == []


def test_training_exports_at_the_end_unless_told_not_to(runs, expected):
  age_dir, age_export = runs["age"]
  assert os.listdir(os.path.join(age_dir, "export")) == ["1"]
  assert export.read_metadata(age_export)["step"] == STEPS["age"]
  assert not os.path.exists(os.path.join(runs["gali4"][0], "export"))  # --noexport
  # Rerunning a finished training does not export the same step again.
  assert export.export_after_training(checkpointing.saved_config(age_dir)) is None
  assert os.listdir(os.path.join(age_dir, "export")) == ["1"]


def test_export_flags_resolve(tmp_path):
  config = config_lib.resolve({"model_dir": str(tmp_path)})
  assert config.export and config.export_dir == os.path.join(str(tmp_path), "export")
  config = config_lib.resolve({"model_dir": str(tmp_path), "export": False,
                               "export_dir": "/serving/x"})
  assert not config.export and config.export_dir == "/serving/x"


def test_flags_json_of_runs_before_export_still_loads(runs, tmp_path):
  with open(os.path.join(runs["age"][0], "flags.json")) as f:
    values = json.load(f)
  del values["export"], values["export_dir"]
  (tmp_path / "flags.json").write_text(json.dumps(values))
  config = checkpointing.saved_config(str(tmp_path))
  assert config.export and config.export_dir == ""  # export_model then uses MODEL_DIR/export


def test_command_line_without_checkpoint_fails_in_one_line(processes):
  results, _, empty = processes
  result = results["no_checkpoint"]
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
  assert "has no trained model" in errors[0] and "train one first" in errors[0]
  assert "Traceback" not in result.stderr
  assert not os.path.exists(empty / "serving")  # nothing written
