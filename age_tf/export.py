"""SavedModel export of a run's encoder and generator for TF Serving: python -m age_tf.export.

python -m age_tf.export --model_dir=/tmp/age_digits --export_dir=/tmp/serving/age_digits

writes EXPORT_DIR/VERSION/ (the next integer version unless --version says
otherwise), the layout TF Serving's --model_base_path expects. The
SavedModel holds only TensorFlow graphs and variables: it loads with
TensorFlow alone (no age_tf, no Keras custom objects). Its signatures, all
with a free batch dimension (H, W, C the image shape, M the latent dimension):

  encode          images float32 (N, H, W, C) in [-1, 1] -> codes float32 (N, M)
                  (the mean of a stochastic encoder)
  generate        codes float32 (N, M) -> images float32 (N, H, W, C) in [-1, 1]
  reconstruct     images float32 (N, H, W, C) -> reconstructions float32 (N, H, W, C)
  sample          noise float32 (N, M), N(0, I) draws -> codes (the prior's draws:
                  projected onto the unit sphere for the sphere prior) and images
  encode_uint8    images uint8 (N, H, W, C) in [0, 255] -> codes float32 (N, M)
  generate_uint8  codes float32 (N, M) -> images uint8 (N, H, W, C) in [0, 255]
  serving_default the same as generate

Every signature runs the networks in inference mode with the BatchNorm
statistics of the run's --bn_statistics (or this command's): by default
recomputed from real training images and prior draws after the checkpoint
is loaded (age_tf/inference_statistics.py), with `moving` training's moving
averages; the checkpoint itself is never changed.

The run's description (method, dataset, image shape, latent dimension and
prior, training step, versions, the BatchNorm statistics, the signatures)
is stored twice: as
assets.extra/age_tf_metadata.json (readable without TensorFlow) and as the
string variable `metadata` of the loaded object
(`json.loads(tf.saved_model.load(d).metadata[0].numpy())`).

A version is written to a temporary sibling directory whose name is not a
number (TF Serving ignores it) and renamed when complete, so TF Serving
never loads a half-written version; an existing version is never replaced.
"""

import datetime
import json
import os
import sys
import uuid

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import tensorflow as tf
from absl import app
from absl import flags
from absl import logging

import age_tf
from age_tf import checkpointing
from age_tf import config as config_lib  # defines --model_dir and --export_dir
from age_tf import data
from age_tf import inference_statistics
from age_tf import prior as prior_lib
from age_tf.errors import UserError

METADATA_DIR = "assets.extra"  # the SavedModel directory for files the graph does not load
METADATA_FILE = "age_tf_metadata.json"
# Prefix of a version being written: not all digits, so TF Serving never loads it.
TEMP_PREFIX = ".tmp-"
DEFAULT_SIGNATURE = "serving_default"
DEFAULT_SIGNATURE_OF = "generate"


def signature_functions(model, image_shape):
  """{signature name: (function returning a dict of named outputs, its input TensorSpec)}."""
  latent_dim = model.latent_dim
  images = tf.TensorSpec([None, *image_shape], tf.float32, name="images")
  pixels = tf.TensorSpec([None, *image_shape], tf.uint8, name="images")
  codes = tf.TensorSpec([None, latent_dim], tf.float32, name="codes")
  noise = tf.TensorSpec([None, latent_dim], tf.float32, name="noise")

  # The input signature fixes the dtypes; the shape checks run in the graph, so
  # TF Serving (whose inputs bypass Python) rejects a wrong shape with a clear
  # message too, before any layer sees it.
  def encode(images):  # pylint: disable=redefined-outer-name
    images = checked(images, "images", image_shape)
    return {"codes": model.encode(images, training=False)}

  def generate(codes):  # pylint: disable=redefined-outer-name
    codes = checked(codes, "codes", [latent_dim])
    return {"images": model.generate(codes, training=False)}

  def reconstruct(images):  # pylint: disable=redefined-outer-name
    images = checked(images, "images", image_shape)
    return {"reconstructions": model.reconstruct(images, training=False)}

  def sample(noise):  # pylint: disable=redefined-outer-name
    prior_codes = prior_lib.from_normal(checked(noise, "noise", [latent_dim]), model.prior)
    return {"codes": prior_codes, "images": model.generate(prior_codes, training=False)}

  def encode_uint8(images):  # pylint: disable=redefined-outer-name
    return encode(data.to_float(images))  # encode checks the shape

  def generate_uint8(codes):  # pylint: disable=redefined-outer-name
    codes = checked(codes, "codes", [latent_dim])
    return {"images": data.to_uint8(model.generate(codes, training=False))}

  return {"encode": (encode, images), "generate": (generate, codes),
          "reconstruct": (reconstruct, images), "sample": (sample, noise),
          "encode_uint8": (encode_uint8, pixels), "generate_uint8": (generate_uint8, codes),
          DEFAULT_SIGNATURE: (generate, codes)}


def checked(tensor, name, example_shape):
  """`tensor`, failing at run time unless its shape is (batch, *example_shape)."""
  expected = [-1, *example_shape]
  shape = tf.shape(tensor)
  # The rank from the run-time shape's values: tf.size or tf.rank would fold
  # to the signature's static rank and miss a tensor of another rank.
  rank = tf.reduce_sum(tf.cast(tf.greater_equal(shape, 0), tf.int32))
  dims = tf.pad(shape, [[0, len(expected)]])[1:len(expected)]
  ok = tf.logical_and(tf.equal(rank, len(expected)),
                      tf.reduce_all(tf.equal(dims, tf.constant(expected[1:], tf.int32))))
  with tf.control_dependencies([tf.debugging.Assert(
      ok, [f"age_tf export: input {name} must have shape (batch, "
           f"{', '.join(map(str, example_shape))}); got shape", shape], summarize=8)]):
    return tf.identity(tensor)


def build_archive(model, image_shape, metadata):
  """A keras.export.ExportArchive with every signature and the metadata variable."""
  # The endpoints' own variables are saved; tracking the networks as well
  # would only make the export slower (Keras walks every layer).
  archive = keras.export.ExportArchive()
  described, endpoints = {}, {}
  for name, (function, spec) in signature_functions(model, image_shape).items():
    if function in endpoints:  # serving_default: generate's traced function again
      endpoint = archive.add_endpoint(name, endpoints[function])
    else:
      endpoint = endpoints[function] = archive.add_endpoint(name, function,
                                                            input_signature=[spec])
    outputs = endpoint.get_concrete_function().structured_outputs
    described[name] = {
        "inputs": {spec.name: _describe(spec)},
        "outputs": {key: _describe(value) for key, value in sorted(outputs.items())}}
  metadata = dict(metadata, signatures=described)
  archive.add_variable_collection(
      "metadata", [tf.Variable(json.dumps(metadata, sort_keys=True), trainable=False,
                               name="age_tf_metadata")])
  return archive, metadata


def _describe(tensor):
  return {"dtype": tensor.dtype.name, "shape": [d if d is not None else -1
                                                for d in tensor.shape.as_list()]}


def versions(export_dir):
  """The integer versions in export_dir (the all-digit subdirectories TF Serving loads)."""
  if not tf.io.gfile.isdir(export_dir):
    return []
  return sorted(int(name.rstrip("/")) for name in tf.io.gfile.listdir(export_dir)
                if name.rstrip("/").isdigit())


def choose_version(export_dir, version=None):
  """The version to write: `version` (UserError if it exists), or the next after the highest."""
  if version is None:
    return max(versions(export_dir), default=0) + 1
  if version < 1:
    raise UserError(f"--version={version} must be a positive integer (TF Serving loads the "
                    "highest); leave it out to take the next free version.")
  path = os.path.join(export_dir, str(version))
  if tf.io.gfile.exists(path):
    raise UserError(f"Version {version} already exists at {path}; exports are never "
                    "overwritten. Leave out --version to write the next one, or delete it "
                    "first.")
  return version


def default_export_dir(model_dir):
  return os.path.join(model_dir, config_lib.EXPORT_SUBDIR)


def export_model(model_dir, export_dir=None, version=None, settings=None, checkpoint=None):
  """Exports a checkpoint of model_dir (default the latest) as export_dir/VERSION; its path.

  export_dir defaults to MODEL_DIR/export, version to the next free integer;
  the BatchNorm statistics served are the run's --bn_statistics unless
  `settings` (inference_statistics.Settings) says otherwise. Raises
  UserError when model_dir holds no trained model or the version exists.
  """
  export_dir = export_dir or default_export_dir(model_dir)
  choose_version(export_dir, version)  # fail before the model is rebuilt
  config, model, step, statistics = inference_statistics.load_served_model(
      model_dir, checkpoint, settings)
  return write_export(model, config, step, export_dir, version, statistics)


def write_export(model, config, step, export_dir, version=None, statistics=None):
  """Writes `model` (restored at `step`) as export_dir/VERSION, atomically; returns the path.

  `model` is exported as it is: give it the statistics it should serve first
  (inference_statistics.prepare returns the model as it serves and the
  `statistics` description the metadata holds).
  """
  tf.io.gfile.makedirs(export_dir)
  version = choose_version(export_dir, version)
  path = os.path.join(export_dir, str(version))
  temp = os.path.join(export_dir, f"{TEMP_PREFIX}{version}-{uuid.uuid4().hex[:8]}")
  spec = config_lib.dataset_spec(config)
  image_shape = (spec.image_size, spec.image_size, spec.channels)
  metadata = {
      "method": config.method, "dataset": config.dataset, "image_shape": list(image_shape),
      "image_range": [-1.0, 1.0], "latent_dim": config.latent_dim, "prior": config.prior,
      "step": int(step), "version": version, "model_dir": config.model_dir,
      "age_tf_version": getattr(age_tf, "__version__", "unknown"),
      "tensorflow_version": tf.__version__, "keras_version": keras.__version__,
      "exported_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "default_signature": DEFAULT_SIGNATURE_OF,
      "bn_statistics": statistics or {"mode": "as given"}}
  try:
    archive, metadata = build_archive(model, image_shape, metadata)
    archive.write_out(temp, verbose=False)
    write_metadata(temp, metadata)
    write_warmup_requests(temp, metadata["signatures"])
    if tf.io.gfile.exists(path):  # another export took this version meanwhile
      raise UserError(f"Version {version} appeared at {path} during the export; it was left "
                      "as it is. Export again to write the next version.")
    tf.io.gfile.rename(temp, path, overwrite=False)
  except BaseException:
    if tf.io.gfile.exists(temp):
      tf.io.gfile.rmtree(temp)
    raise
  logging.info("Exported %s step %d to %s (signatures: %s).", config.method, step, path,
               ", ".join(metadata["signatures"]))
  return path


def write_metadata(saved_model_dir, metadata):
  directory = os.path.join(saved_model_dir, METADATA_DIR)
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, METADATA_FILE), "w") as f:
    f.write(json.dumps(metadata, indent=2, sort_keys=True))


def read_metadata(saved_model_dir):
  """The metadata of an export (a version directory), from its assets.extra file."""
  with tf.io.gfile.GFile(os.path.join(saved_model_dir, METADATA_DIR, METADATA_FILE)) as f:
    return json.load(f)


WARMUP_FILE = "tf_serving_warmup_requests"  # in METADATA_DIR; TF Serving's name for it


def write_warmup_requests(saved_model_dir, signatures, batch=1):
  """Writes assets.extra/tf_serving_warmup_requests: one Predict request per signature.

  TF Serving runs these requests when it loads the version, before the
  version serves, so the first user request does not pay for graph
  initialisation. The file is a TFRecord of tensorflow.serving.PredictionLog
  protos, predict_log {request {model_spec {signature_name}, inputs}},
  encoded here in the protobuf wire format (tensorflow-serving-api is not a
  runtime requirement; tests read the file back with its protos). Inputs:
  `batch` fixed pseudo-random examples of each input's dtype and shape
  (images in the signature's range, codes and noise N(0, I)). `signatures`
  is the metadata's {name: {"inputs": {key: {"dtype", "shape"}}, ...}}.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top

  def varint(value):
    out = bytearray()
    while value > 0x7F:
      out.append(value & 0x7F | 0x80)
      value >>= 7
    return bytes(out) + bytes([value])

  def field(number, payload):  # a length-delimited field (wire type 2)
    return varint(number << 3 | 2) + varint(len(payload)) + payload

  with tf.io.TFRecordWriter(os.path.join(saved_model_dir, METADATA_DIR, WARMUP_FILE)) as writer:
    for name, described in sorted(signatures.items()):
      rng = np.random.default_rng(0)
      inputs = b""
      for key, spec in sorted(described["inputs"].items()):
        shape = [batch, *spec["shape"][1:]]
        if spec["dtype"] == "uint8":
          array = rng.integers(0, 256, shape).astype(np.uint8)
        elif key == "images":
          array = rng.uniform(-1, 1, shape).astype(spec["dtype"])
        else:
          array = rng.standard_normal(shape).astype(spec["dtype"])
        tensor = tf.make_tensor_proto(array).SerializeToString()
        inputs += field(2, field(1, key.encode()) + field(2, tensor))  # map<string, TensorProto>
      request = field(1, field(3, name.encode())) + inputs  # model_spec.signature_name, inputs
      writer.write(field(6, field(1, request)))  # PredictionLog.predict_log.request


def export_after_training(config):
  """Training's export: a new version unless the latest one already holds this step.

  Returns the new version's path, or None when nothing was written.
  """
  saved, model, step = checkpointing.load_model(config.model_dir)
  existing = versions(config.export_dir)
  if existing:
    latest = os.path.join(config.export_dir, str(existing[-1]))
    try:
      previous = read_metadata(latest)
    except (tf.errors.NotFoundError, ValueError):
      previous = {}
    if previous.get("step") == step and previous.get("method") == saved.method:
      logging.info("%s already exports step %d; not exporting again.", latest, step)
      return None
  model, statistics = inference_statistics.prepare(model, saved)
  return write_export(model, saved, step, config.export_dir, statistics=statistics)


# ---------------------------------------------------------------- command line


def _define_flags():
  # Only the command line has --version; --model_dir and --export_dir are
  # age_tf.config's, shared with training.
  flags.DEFINE_integer("version", None, "Version to write under --export_dir (a positive "
                       "integer; default: one more than the highest there). An existing "
                       "version is never overwritten.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.INFO)
  flag_values = flags.FLAGS
  try:
    if not flag_values.model_dir:
      raise UserError("--model_dir is required: the run directory to export (the "
                      "--model_dir given to python -m age_tf.train).")
    config = checkpointing.saved_config(flag_values.model_dir)
    settings = (inference_statistics.settings_from_flags(config, flag_values)
                if config is not None else None)
    path = export_model(flag_values.model_dir, flag_values.export_dir, flag_values.version,
                        settings)
  except UserError as e:
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  print(path)


def run():
  _define_flags()
  app.run(main)


if __name__ == "__main__":
  run()
