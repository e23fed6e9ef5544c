"""Client for an age_tf SavedModel: TF Serving over REST or gRPC, or a local export; writes PNG grids.

  # TF Serving's REST port (8501 by default):
  python export/client.py --server=localhost:8501 --model=age_digits --generate 16 --out samples.png
  # its gRPC port (8500), with tensorflow-serving-api installed:
  python export/client.py --server=localhost:8500 --protocol=grpc --model=age_digits \\
      --reconstruct a.png b.png --out reconstructions.png
  # no server: a version directory written by `python -m age_tf.export`:
  python export/client.py --saved_model=/tmp/serving/age_digits/1 --generate 16 --out samples.png

Everything the client needs to know about the model (input names, dtypes,
image shape, latent dimension) comes from the served signature definitions:
TF Serving's model metadata (REST GET /v1/models/MODEL/metadata, gRPC
GetModelMetadata) or the SavedModel's saved_model.pb. --generate sends N(0, I)
noise to the `sample` signature, which maps it to the model's prior and
generates; --reconstruct sends images in [-1, 1] to `reconstruct`;
--encode sends them to `encode` and saves the codes (.npy).

Needs numpy and Pillow; TensorFlow for --saved_model and gRPC, and
tensorflow-serving-api for gRPC. It does not import age_tf.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.request

import numpy as np
from PIL import Image

# SignatureDef dtype names -> numpy dtypes (those age_tf's signatures use, and a few more).
DTYPES = {"DT_FLOAT": np.float32, "DT_DOUBLE": np.float64, "DT_UINT8": np.uint8,
          "DT_INT32": np.int32, "DT_INT64": np.int64}
PREDICT_METHOD = "tensorflow/serving/predict"
GRID_COLUMNS = 8
TIMEOUT_SECONDS = 60.0


class ClientError(Exception):
  """A problem the user can fix (server unreachable, wrong model, bad input); shown without a traceback."""


# ---------------------------------------------------------------- signatures


class TensorInfo:
  """A signature input or output: its dtype name (DT_FLOAT, ...) and shape (-1: any; None: any rank)."""

  def __init__(self, dtype, shape):
    self.dtype, self.shape = dtype, shape

  @property
  def numpy_dtype(self):
    if self.dtype not in DTYPES:
      raise ClientError(f"Unsupported signature dtype {self.dtype}.")
    return np.dtype(DTYPES[self.dtype])

  def accepts(self, array):
    """Whether `array` has this dtype and a compatible shape."""
    if array.dtype != self.numpy_dtype:
      return False
    if self.shape is None:
      return True
    return len(array.shape) == len(self.shape) and all(
        want in (-1, got) for want, got in zip(self.shape, array.shape))

  def __str__(self):
    shape = "(any)" if self.shape is None else f"({', '.join(map(str, self.shape))})"
    return f"{self.numpy_dtype.name} {shape}"


class Signature:
  """One SignatureDef: name, method name, {input name: TensorInfo}, {output name: TensorInfo}."""

  def __init__(self, name, method_name, inputs, outputs):
    self.name, self.method_name, self.inputs, self.outputs = name, method_name, inputs, outputs

  @property
  def input_name(self):
    """The single input's name (every age_tf signature has one)."""
    if len(self.inputs) != 1:
      raise ClientError(f"Signature '{self.name}' has inputs {sorted(self.inputs)}; this "
                        "client sends one.")
    return next(iter(self.inputs))

  def __str__(self):
    inputs = ", ".join(f"{k} {v}" for k, v in sorted(self.inputs.items()))
    outputs = ", ".join(f"{k} {v}" for k, v in sorted(self.outputs.items()))
    return f"{self.name}: {inputs} -> {outputs}"


def _tensor_info(info):
  shape = info.get("tensor_shape", {})
  if shape.get("unknown_rank"):
    return TensorInfo(info.get("dtype", "DT_INVALID"), None)
  return TensorInfo(info.get("dtype", "DT_INVALID"),
                    [int(d.get("size", 0)) for d in shape.get("dim", [])])


def signatures_from_json(signature_defs):
  """{name: Signature} from SignatureDefs in protobuf's JSON form (field names as in the .proto).

  That is the form of TF Serving's REST metadata (`metadata.signature_def.signature_def`)
  and of json_format.MessageToDict(..., preserving_proto_field_name=True).
  Only prediction signatures are kept (not __saved_model_init_op).
  """
  result = {}
  for name, definition in signature_defs.items():
    if definition.get("method_name") != PREDICT_METHOD:
      continue
    result[name] = Signature(
        name, definition["method_name"],
        {k: _tensor_info(v) for k, v in definition.get("inputs", {}).items()},
        {k: _tensor_info(v) for k, v in definition.get("outputs", {}).items()})
  return result


def _signature_defs_to_json(signature_def_map):
  from google.protobuf import json_format  # pylint: disable=g-import-not-at-top
  return {name: json_format.MessageToDict(definition, preserving_proto_field_name=True)
          for name, definition in signature_def_map.items()}


def signature_defs_from_saved_model(saved_model_dir):
  """The SignatureDef protos {name: SignatureDef} of a SavedModel's 'serve' MetaGraph."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  path = os.path.join(saved_model_dir, "saved_model.pb")
  if not os.path.exists(path):
    raise ClientError(f"--saved_model={saved_model_dir} has no saved_model.pb; pass a version "
                      "directory written by `python -m age_tf.export` (EXPORT_DIR/N).")
  saved_model = saved_model_pb2.SavedModel()
  with open(path, "rb") as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    if "serve" in meta_graph.meta_info_def.tags:
      return dict(meta_graph.signature_def)
  raise ClientError(f"{path} has no MetaGraph tagged 'serve'.")


# ---------------------------------------------------------------- requests


def check_input(signature, array):
  """Raises ClientError unless `array` matches the signature's single input."""
  info = signature.inputs[signature.input_name]
  if not info.accepts(array):
    raise ClientError(f"Signature '{signature.name}' takes {signature.input_name} {info}; "
                      f"got {array.dtype.name} {tuple(array.shape)}.")


def rest_request(signature, array):
  """The JSON body of a TF Serving REST :predict call in the row ("instances") format."""
  check_input(signature, array)
  key = signature.input_name
  return {"signature_name": signature.name,
          "instances": [{key: row.tolist()} for row in array]}


def parse_rest_response(signature, body):
  """{output name: array} from a REST :predict response in the row format."""
  if "error" in body:
    raise ClientError(f"The server refused the request: {body['error']}")
  predictions = body.get("predictions")
  if predictions is None:
    raise ClientError(f"The server's response has no 'predictions': {str(body)[:200]}")
  if predictions and isinstance(predictions[0], dict):
    columns = {k: [row[k] for row in predictions] for k in predictions[0]}
  else:  # one output: TF Serving leaves its name out
    (name,) = signature.outputs
    columns = {name: predictions}
  return {k: np.asarray(v, dtype=signature.outputs[k].numpy_dtype).reshape(
      (len(predictions),) + _example_shape(signature.outputs[k], v)) for k, v in columns.items()}


def _example_shape(info, values):
  if info.shape is not None and all(d >= 0 for d in info.shape[1:]):
    return tuple(info.shape[1:])
  return np.asarray(values).shape[1:]


def grpc_request(model, signature, array, version=None):
  """A tensorflow_serving PredictRequest for `signature` with `array` as its input."""
  check_input(signature, array)
  predict_pb2 = _serving_api("predict_pb2")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  request = predict_pb2.PredictRequest()
  request.model_spec.name = model
  request.model_spec.signature_name = signature.name
  if version is not None:
    request.model_spec.version.value = int(version)
  request.inputs[signature.input_name].CopyFrom(
      tf.make_tensor_proto(array, dtype=tf.as_dtype(array.dtype), shape=array.shape))
  return request


def _serving_api(module):
  try:
    return __import__(f"tensorflow_serving.apis.{module}", fromlist=[module])
  except ImportError as e:
    raise ClientError("--protocol=grpc needs tensorflow-serving-api (pip install "
                      "tensorflow-serving-api==2.21.0, the release matching TensorFlow "
                      f"2.21): {e}") from e


# ---------------------------------------------------------------- backends


class RestBackend:
  """TF Serving's REST API: http://SERVER/v1/models/MODEL[/versions/N]."""

  def __init__(self, server, model, version=None):
    server = server if "://" in server else f"http://{server}"
    self.base = f"{server.rstrip('/')}/v1/models/{model}"
    if version is not None:
      self.base += f"/versions/{int(version)}"

  def _call(self, url, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    try:
      with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
        return json.load(response)
    except urllib.error.HTTPError as e:
      detail = e.read().decode(errors="replace")
      try:
        detail = json.loads(detail).get("error", detail)
      except ValueError:
        pass
      raise ClientError(f"{url} answered {e.code}: {detail}") from e
    except urllib.error.URLError as e:
      raise ClientError(f"Cannot reach {url} ({e.reason}); is TF Serving running with "
                        "--rest_api_port there?") from e

  def signatures(self):
    body = self._call(f"{self.base}/metadata")
    try:
      definitions = body["metadata"]["signature_def"]["signature_def"]
    except (KeyError, TypeError) as e:
      raise ClientError(f"{self.base}/metadata has no signature_def: {str(body)[:200]}") from e
    return signatures_from_json(definitions)

  def predict(self, signature, array):
    return parse_rest_response(signature,
                               self._call(f"{self.base}:predict", rest_request(signature, array)))


class GrpcBackend:
  """TF Serving's gRPC PredictionService (tensorflow-serving-api)."""

  def __init__(self, server, model, version=None):
    import grpc  # pylint: disable=g-import-not-at-top
    service = _serving_api("prediction_service_pb2_grpc")
    self.grpc = grpc
    self.model, self.version, self.server = model, version, server
    self.channel = grpc.insecure_channel(server)
    self.stub = service.PredictionServiceStub(self.channel)

  def _call(self, method, request):
    try:
      return method(request, timeout=TIMEOUT_SECONDS)
    except self.grpc.RpcError as e:
      raise ClientError(f"{self.server} answered {e.code().name}: {e.details()}") from e

  def signatures(self):
    metadata_pb2 = _serving_api("get_model_metadata_pb2")
    request = metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = self.model
    if self.version is not None:
      request.model_spec.version.value = int(self.version)
    response = self._call(self.stub.GetModelMetadata, request)
    definitions = metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(definitions)
    return signatures_from_json(_signature_defs_to_json(definitions.signature_def))

  def predict(self, signature, array):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    response = self._call(self.stub.Predict,
                          grpc_request(self.model, signature, array, self.version))
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


class LocalBackend:
  """A SavedModel directory loaded with tf.saved_model.load: no server."""

  def __init__(self, saved_model_dir):
    self.saved_model_dir = saved_model_dir
    self.definitions = signature_defs_from_saved_model(saved_model_dir)
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.tf = tf
    self.loaded = tf.saved_model.load(saved_model_dir)

  def signatures(self):
    return signatures_from_json(_signature_defs_to_json(self.definitions))

  def predict(self, signature, array):
    check_input(signature, array)
    function = self.loaded.signatures[signature.name]
    try:
      outputs = function(**{signature.input_name: self.tf.constant(array)})
    except (self.tf.errors.InvalidArgumentError, TypeError, ValueError) as e:
      raise ClientError(f"The SavedModel refused the input: {e}") from e
    return {k: v.numpy() for k, v in outputs.items()}


def make_backend(args):
  if args.saved_model:
    return LocalBackend(args.saved_model)
  if not args.server or not args.model:
    raise ClientError("Give --server=HOST:PORT and --model=NAME (TF Serving's --model_name), "
                      "or --saved_model=EXPORT_DIR/N to run a local export without a server.")
  backend = GrpcBackend if args.protocol == "grpc" else RestBackend
  return backend(args.server, args.model, args.version)


# ---------------------------------------------------------------- images


def to_uint8(images):
  """float [-1, 1] -> uint8 [0, 255] (as age_tf's export and training do)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def grid(images, columns=GRID_COLUMNS):
  """Tiles (N, H, W, C) images (uint8, or float in [-1, 1]) into one uint8 image; missing tiles black."""
  images = np.asarray(images)
  images = images if images.dtype == np.uint8 else to_uint8(images)
  count, height, width, channels = images.shape
  rows = -(-count // columns)
  canvas = np.zeros((rows * height, columns * width, channels), np.uint8)
  for i, image in enumerate(images):
    r, c = divmod(i, columns)
    canvas[r * height:(r + 1) * height, c * width:(c + 1) * width] = image
  return canvas


def write_png(path, image):
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path, format="PNG")


def load_images(paths, shape):
  """Image files (any format Pillow reads) or .npy arrays -> float32 (N, H, W, C) in [-1, 1].

  Files are converted to the model's channels and bilinearly resized to its
  size; .npy arrays must already have the shape, as uint8 or floats in [-1, 1].
  """
  height, width, channels = shape
  batch = []
  for path in paths:
    if path.endswith(".npy"):
      array = np.load(path)
      array = array[None] if array.ndim == 3 else array
      if array.shape[1:] != (height, width, channels):
        raise ClientError(f"{path} holds images of shape {array.shape[1:]}; the model takes "
                          f"{(height, width, channels)}.")
      batch.extend(array.astype(np.float32) / 127.5 - 1.0 if array.dtype == np.uint8
                   else array.astype(np.float32))
      continue
    try:
      with Image.open(path) as image:
        image = image.convert("L" if channels == 1 else "RGB").resize((width, height),
                                                                       Image.BILINEAR)
        pixels = np.asarray(image, np.float32).reshape(height, width, channels)
    except OSError as e:
      raise ClientError(f"Cannot read image {path}: {e}") from e
    batch.append(pixels / 127.5 - 1.0)
  if not batch:
    raise ClientError("No images given.")
  return np.stack(batch).astype(np.float32)


def interleave(real, reconstruction):
  """[r0, g0, r1, g1, ...]: in an 8-column grid, odd columns real, even columns reconstructed."""
  pairs = np.stack([np.asarray(real), np.asarray(reconstruction)], axis=1)
  return pairs.reshape((-1,) + pairs.shape[2:])


# ---------------------------------------------------------------- actions


def _signature(signatures, name):
  if name not in signatures:
    raise ClientError(f"The model has no '{name}' signature (it has {', '.join(sorted(signatures))}"
                      "); export it with `python -m age_tf.export`.")
  return signatures[name]


def generate(backend, signatures, count, seed):
  """`count` samples: N(0, I) noise through the `sample` signature. Returns (codes, images)."""
  signature = _signature(signatures, "sample")
  latent_dim = signature.inputs[signature.input_name].shape[1]
  noise = np.random.default_rng(seed).standard_normal((count, latent_dim)).astype(np.float32)
  outputs = backend.predict(signature, noise)
  return outputs["codes"], outputs["images"]


def reconstruct(backend, signatures, images):
  return backend.predict(_signature(signatures, "reconstruct"), images)["reconstructions"]


def encode(backend, signatures, images):
  return backend.predict(_signature(signatures, "encode"), images)["codes"]


def image_shape(signatures):
  info = _signature(signatures, "reconstruct").inputs["images"]
  return tuple(info.shape[1:])


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  where = parser.add_argument_group("where the model is")
  where.add_argument("--server", help="TF Serving's HOST:PORT (REST: --rest_api_port, 8501; "
                     "gRPC: --port, 8500)")
  where.add_argument("--model", help="the served model's name (TF Serving's --model_name)")
  where.add_argument("--version", type=int, help="a specific served version (default: the "
                     "server's choice, the latest)")
  where.add_argument("--protocol", choices=("rest", "grpc"), default="rest",
                     help="REST with JSON (default) or gRPC (needs tensorflow-serving-api)")
  where.add_argument("--saved_model", help="instead of a server: a SavedModel version "
                     "directory (EXPORT_DIR/N), run locally with TensorFlow")
  what = parser.add_mutually_exclusive_group(required=True)
  what.add_argument("--generate", type=int, metavar="N", help="write a grid of N samples")
  what.add_argument("--reconstruct", nargs="+", metavar="IMAGE", help="write a grid of "
                    "real | reconstruction pairs of these image files (or .npy arrays)")
  what.add_argument("--encode", nargs="+", metavar="IMAGE", help="save the codes (means "
                    "for stochastic encoders) of these images to --out (.npy)")
  what.add_argument("--signatures", action="store_true", help="print the model's signatures")
  parser.add_argument("--out", help="output file: .png for --generate and --reconstruct, "
                      ".npy for --encode")
  parser.add_argument("--seed", type=int, default=0, help="seed of the noise --generate draws")
  args = parser.parse_args(argv)
  if not args.signatures and not args.out:
    parser.error("--out is required with --generate, --reconstruct and --encode")
  if args.generate is not None and args.generate < 1:
    parser.error("--generate needs a positive count")
  return args


def run(args):
  """Does what `args` ask; returns the line to print."""
  backend = make_backend(args)
  signatures = backend.signatures()
  if args.signatures:
    return "\n".join(str(signatures[name]) for name in sorted(signatures))
  if args.generate is not None:
    codes, images = generate(backend, signatures, args.generate, args.seed)
    write_png(args.out, grid(images))
    return (f"wrote {args.out}: {len(images)} samples {tuple(images.shape[1:])}, codes "
            f"{tuple(codes.shape[1:])} (seed {args.seed})")
  images = load_images(args.reconstruct or args.encode, image_shape(signatures))
  if args.encode:
    codes = encode(backend, signatures, images)
    np.save(args.out, codes)
    return f"wrote {args.out}: codes {codes.shape} of {len(images)} images"
  reconstructions = reconstruct(backend, signatures, images)
  write_png(args.out, grid(interleave(images, reconstructions)))
  error = float(np.mean(np.abs(reconstructions - images)))
  return (f"wrote {args.out}: {len(images)} real | reconstruction pairs (mean absolute "
          f"error {error:.4f} in [-1, 1])")


def main(argv=None):
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    print(run(args))
  except ClientError as e:
    sys.stderr.write(f"error: {e}\n")
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
