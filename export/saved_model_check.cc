// saved_model_check: loads an export version directory the way TF Serving's
// model server does, with TensorFlow's own C++ loader, and runs it.
//
// tensorflow::LoadSavedModel (SessionOptions, RunOptions, tag "serve") is the
// call TF Serving's SavedModelBundleFactory makes; a signature is run as
// TF Serving's Predict runs it (predict_util.cc): the request's inputs are
// matched to the SignatureDef's aliases, fed by their tensor names, and every
// output of the signature is fetched by its tensor name.
//
// Build: export/build.sh (g++ against the TensorFlow pip wheel's headers and
// libraries). Usage:
//
//   saved_model_check VERSION_DIR
//       lists the signatures: method name, inputs and outputs (dtype, shape,
//       tensor name)
//   saved_model_check VERSION_DIR --run=SIGNATURE --input=ALIAS=FILE.npy...
//                     [--output_dir=DIR] [--repeat=N]
//       runs one signature on .npy inputs; writes DIR/OUTPUT.npy for each
//       output; --repeat=N then times N more runs and prints the median
//   saved_model_check VERSION_DIR --warmup [--output_dir=DIR]
//       replays VERSION_DIR/assets.extra/tf_serving_warmup_requests, the
//       TFRecord of tensorflow.serving.PredictionLog records TF Serving runs
//       when it loads a version; writes DIR/RECORD_SIGNATURE_OUTPUT.npy
//   --intra_op_threads=N, --inter_op_threads=N: as TF Serving's
//       --tensorflow_intra_op_parallelism / --tensorflow_inter_op_parallelism
//       (default 0: TensorFlow's choice)
//
// The TFRecord framing (and its CRCs) is read with TensorFlow's RecordReader.
// The serving protos (PredictionLog, PredictLog, PredictRequest, ModelSpec)
// are not in the wheel, so their few fields are decoded from the protobuf wire
// format here; each input is a tensorflow.TensorProto, parsed with the wheel's
// own proto class and converted with Tensor::FromProto, as TF Serving does.
//
// .npy files: format version 1.0 (2.0/3.0 read too), C order, little-endian
// float32, float64, uint8, int32 or int64.
//
// Exit status: 0 success, 1 a load or run failure (the message on stderr,
// starting "error: "), 2 a usage error.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "tensorflow/cc/saved_model/loader.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor.pb.h"
#include "tensorflow/core/framework/tensor_shape.pb.h"
#include "tensorflow/core/lib/io/record_reader.h"
#include "tensorflow/core/platform/env.h"
#include "tensorflow/core/protobuf/config.pb.h"
#include "tensorflow/core/protobuf/meta_graph.pb.h"
#include "tensorflow/core/public/session.h"
#include "tensorflow/core/public/session_options.h"

namespace {

using tensorflow::DataType;
using tensorflow::Tensor;

constexpr char kServeTag[] = "serve";  // tensorflow::kSavedModelTagServe
constexpr char kDefaultSignature[] = "serving_default";
constexpr char kWarmupFile[] = "assets.extra/tf_serving_warmup_requests";
constexpr int kMaxWarmupRecords = 1000;  // TF Serving refuses more

struct Failure {
  std::string message;
};

[[noreturn]] void Fail(const std::string& message) { throw Failure{message}; }

void Check(const absl::Status& status, const std::string& context) {
  if (!status.ok()) Fail(context + ": " + std::string(status.message()));
}

// ------------------------------------------------------------------ dtypes

struct DtypeInfo {
  DataType dtype;
  const char* name;   // numpy's name
  const char* descr;  // .npy descr
  size_t size;
};

const DtypeInfo kDtypes[] = {
    {tensorflow::DT_FLOAT, "float32", "<f4", 4},
    {tensorflow::DT_DOUBLE, "float64", "<f8", 8},
    {tensorflow::DT_UINT8, "uint8", "|u1", 1},
    {tensorflow::DT_INT32, "int32", "<i4", 4},
    {tensorflow::DT_INT64, "int64", "<i8", 8},
};

const DtypeInfo* FindDtype(DataType dtype) {
  for (const auto& info : kDtypes) {
    if (info.dtype == dtype) return &info;
  }
  return nullptr;
}

std::string DtypeName(DataType dtype) {
  const DtypeInfo* info = FindDtype(dtype);
  return info ? info->name : tensorflow::DataTypeString(dtype);
}

std::string ShapeString(const std::vector<int64_t>& dims) {
  std::ostringstream out;
  out << "(";
  for (size_t i = 0; i < dims.size(); ++i) out << (i ? ", " : "") << dims[i];
  out << (dims.size() == 1 ? ",)" : ")");
  return out.str();
}

std::string ShapeString(const tensorflow::TensorShapeProto& shape) {
  if (shape.unknown_rank()) return "(unknown rank)";
  std::vector<int64_t> dims;
  for (const auto& dim : shape.dim()) dims.push_back(dim.size());
  return ShapeString(dims);
}

std::string ShapeString(const tensorflow::TensorShape& shape) {
  std::vector<int64_t> dims;
  for (int i = 0; i < shape.dims(); ++i) dims.push_back(shape.dim_size(i));
  return ShapeString(dims);
}

// ------------------------------------------------------------------ .npy

Tensor ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) Fail("cannot open " + path);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.size() < 10 || data.compare(0, 6, "\x93NUMPY") != 0) Fail(path + ": not a .npy file");
  const int major = static_cast<unsigned char>(data[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<unsigned char>(data[8]) | static_cast<unsigned char>(data[9]) << 8;
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (data.size() < 12) Fail(path + ": truncated .npy header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= size_t{static_cast<unsigned char>(data[8 + i])} << (8 * i);
    offset = 12;
  } else {
    Fail(path + ": unsupported .npy version " + std::to_string(major));
  }
  if (data.size() < offset + header_len) Fail(path + ": truncated .npy header");
  const std::string header = data.substr(offset, header_len);
  offset += header_len;

  auto value_of = [&](const std::string& key) {
    size_t at = header.find("'" + key + "'");
    if (at == std::string::npos) Fail(path + ": .npy header has no " + key);
    at = header.find(':', at);
    if (at == std::string::npos) Fail(path + ": bad .npy header");
    return header.substr(at + 1);
  };
  std::string descr = value_of("descr");
  const size_t quote = descr.find_first_of("'\"");
  descr = descr.substr(quote + 1, descr.find(descr[quote], quote + 1) - quote - 1);
  if (descr == "<u1") descr = "|u1";
  const DtypeInfo* info = nullptr;
  for (const auto& candidate : kDtypes) {
    if (descr == candidate.descr) info = &candidate;
  }
  if (!info) Fail(path + ": unsupported .npy dtype " + descr +
                  " (float32, float64, uint8, int32, int64, little-endian)");
  const std::string fortran_order = value_of("fortran_order");
  if (fortran_order.compare(fortran_order.find_first_not_of(' '), 4, "True") == 0)
    Fail(path + ": Fortran-order .npy arrays are not supported");
  std::string shape_text = value_of("shape");
  shape_text = shape_text.substr(shape_text.find('(') + 1);
  shape_text = shape_text.substr(0, shape_text.find(')'));
  tensorflow::TensorShape shape;
  std::istringstream dims(shape_text);
  std::string item;
  while (std::getline(dims, item, ',')) {
    if (item.find_first_not_of(" \t") == std::string::npos) continue;
    shape.AddDim(std::stoll(item));
  }
  Tensor tensor(info->dtype, shape);
  const size_t bytes = static_cast<size_t>(shape.num_elements()) * info->size;
  if (data.size() - offset != bytes)
    Fail(path + ": expected " + std::to_string(bytes) + " bytes of data, found " +
         std::to_string(data.size() - offset));
  if (bytes) std::memcpy(tensor.data(), data.data() + offset, bytes);
  return tensor;
}

void WriteNpy(const std::string& path, const Tensor& tensor) {
  const DtypeInfo* info = FindDtype(tensor.dtype());
  if (!info) Fail("cannot write " + tensorflow::DataTypeString(tensor.dtype()) + " to .npy");
  std::vector<int64_t> dims;
  for (int i = 0; i < tensor.dims(); ++i) dims.push_back(tensor.dim_size(i));
  std::string header = std::string("{'descr': '") + info->descr +
                       "', 'fortran_order': False, 'shape': " + ShapeString(dims) + ", }";
  // Pad with spaces so that the data starts at a multiple of 64 bytes.
  const size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) Fail("cannot write " + path);
  out.write("\x93NUMPY\x01\x00", 8);
  const char length[2] = {static_cast<char>(header.size() & 0xff),
                          static_cast<char>(header.size() >> 8)};
  out.write(length, 2);
  out << header;
  const auto bytes = tensor.tensor_data();
  out.write(bytes.data(), bytes.size());
  if (!out) Fail("cannot write " + path);
}

// ------------------------------------------------------------------ loading and running

struct Options {
  std::string version_dir;
  std::string run;
  std::vector<std::pair<std::string, std::string>> inputs;  // alias, .npy path
  std::string output_dir;
  int repeat = 0;
  bool warmup = false;
  int intra_op_threads = 0;
  int inter_op_threads = 0;
};

std::unique_ptr<tensorflow::SavedModelBundle> Load(const Options& options) {
  // As TF Serving's SavedModelBundleFactory: the session config's
  // parallelism from the server's flags, default RunOptions, tag "serve".
  tensorflow::SessionOptions session_options;
  session_options.config.set_intra_op_parallelism_threads(options.intra_op_threads);
  session_options.config.set_inter_op_parallelism_threads(options.inter_op_threads);
  tensorflow::RunOptions run_options;
  auto bundle = std::make_unique<tensorflow::SavedModelBundle>();
  const auto began = std::chrono::steady_clock::now();
  const absl::Status status = tensorflow::LoadSavedModel(
      session_options, run_options, options.version_dir, {kServeTag}, bundle.get());
  std::string context = "LoadSavedModel(" + options.version_dir + ", tags {serve})";
  if (absl::StrContains(status.message(), "No session factory registered"))
    context += " [libtensorflow_cc.so.2 was not linked: build with export/build.sh, which "
               "links it with -Wl,--no-as-needed]";
  Check(status, context);
  const double ms = std::chrono::duration<double, std::milli>(
                        std::chrono::steady_clock::now() - began).count();
  std::printf("loaded %s (tags {serve}) in %.0f ms\n", options.version_dir.c_str(), ms);
  return bundle;
}

std::string JoinKeys(const google::protobuf::Map<std::string, tensorflow::TensorInfo>& map) {
  std::vector<std::string> keys;
  for (const auto& entry : map) keys.push_back(entry.first);
  std::sort(keys.begin(), keys.end());
  std::string joined;
  for (const auto& key : keys) joined += (joined.empty() ? "" : ", ") + key;
  return joined;
}

const tensorflow::SignatureDef& FindSignature(const tensorflow::SavedModelBundle& bundle,
                                              std::string name) {
  if (name.empty()) name = kDefaultSignature;  // as TF Serving
  const auto& signatures = bundle.meta_graph_def.signature_def();
  const auto found = signatures.find(name);
  if (found == signatures.end()) Fail("Serving signature key \"" + name + "\" not found.");
  return found->second;
}

using Outputs = std::vector<std::pair<std::string, Tensor>>;  // alias, value (sorted)

// The request's inputs {alias: tensor} checked against the SignatureDef as
// TF Serving's Predict checks them, then one Session::Run.
Outputs RunSignature(const tensorflow::SavedModelBundle& bundle, const std::string& name,
                     const std::map<std::string, Tensor>& inputs, double* ms = nullptr) {
  const tensorflow::SignatureDef& signature = FindSignature(bundle, name);
  if (inputs.size() != static_cast<size_t>(signature.inputs().size())) {
    std::string sent;
    for (const auto& entry : inputs) sent += (sent.empty() ? "" : ", ") + entry.first;
    Fail("input size does not match signature: " + std::to_string(inputs.size()) +
         "!=" + std::to_string(signature.inputs().size()) + " len({" + sent + "}) != len({" +
         JoinKeys(signature.inputs()) + "})");
  }
  std::vector<std::pair<std::string, Tensor>> feeds;
  for (const auto& [alias, tensor] : inputs) {
    const auto info = signature.inputs().find(alias);
    if (info == signature.inputs().end())
      Fail("input tensor alias not found in signature: " + alias +
           ". Inputs expected to be in the set {" + JoinKeys(signature.inputs()) + "}.");
    feeds.emplace_back(info->second.name(), tensor);
  }
  std::vector<std::string> aliases, fetches;
  for (const auto& entry : signature.outputs()) aliases.push_back(entry.first);
  std::sort(aliases.begin(), aliases.end());
  for (const auto& alias : aliases) fetches.push_back(signature.outputs().at(alias).name());
  std::vector<Tensor> values;
  tensorflow::RunOptions run_options;
  tensorflow::RunMetadata run_metadata;
  const auto began = std::chrono::steady_clock::now();
  Check(bundle.GetSession()->Run(run_options, feeds, fetches, {}, &values, &run_metadata),
        "signature " + (name.empty() ? std::string(kDefaultSignature) : name));
  if (ms) *ms = std::chrono::duration<double, std::milli>(
                    std::chrono::steady_clock::now() - began).count();
  if (values.size() != aliases.size()) Fail("session returned the wrong number of outputs");
  Outputs outputs;
  for (size_t i = 0; i < aliases.size(); ++i) outputs.emplace_back(aliases[i], values[i]);
  return outputs;
}

void WriteOutputs(const Outputs& outputs, const std::string& output_dir,
                  const std::string& prefix) {
  for (const auto& [alias, value] : outputs) {
    std::string line = "  output " + alias + ": " + DtypeName(value.dtype()) + " " +
                       ShapeString(value.shape());
    if (!output_dir.empty()) {
      const std::string path = output_dir + "/" + prefix + alias + ".npy";
      WriteNpy(path, value);
      line += " -> " + path;
    }
    std::printf("%s\n", line.c_str());
  }
}

void List(const tensorflow::SavedModelBundle& bundle) {
  std::vector<std::string> names;
  for (const auto& entry : bundle.meta_graph_def.signature_def()) {
    if (entry.first.rfind("__", 0) != 0) names.push_back(entry.first);  // not __saved_model_init_op
  }
  std::sort(names.begin(), names.end());
  std::printf("%zu signatures\n", names.size());
  for (const auto& name : names) {
    const auto& signature = bundle.meta_graph_def.signature_def().at(name);
    std::printf("signature %s: method %s\n", name.c_str(), signature.method_name().c_str());
    for (const auto* side : {&signature.inputs(), &signature.outputs()}) {
      std::vector<std::string> aliases;
      for (const auto& entry : *side) aliases.push_back(entry.first);
      std::sort(aliases.begin(), aliases.end());
      for (const auto& alias : aliases) {
        const auto& info = side->at(alias);
        std::printf("  %s %s: %s %s (tensor %s)\n", side == &signature.inputs() ? "input" : "output",
                    alias.c_str(), DtypeName(info.dtype()).c_str(),
                    ShapeString(info.tensor_shape()).c_str(), info.name().c_str());
      }
    }
  }
}

int64_t BatchOf(const std::map<std::string, Tensor>& inputs) {
  for (const auto& entry : inputs) {
    if (entry.second.dims() > 0) return entry.second.dim_size(0);
  }
  return 1;
}

void Run(const tensorflow::SavedModelBundle& bundle, const Options& options) {
  std::printf("signature %s\n", options.run.c_str());
  std::map<std::string, Tensor> inputs;
  for (const auto& [alias, path] : options.inputs) {
    Tensor tensor = ReadNpy(path);
    std::printf("  input %s: %s %s <- %s\n", alias.c_str(), DtypeName(tensor.dtype()).c_str(),
                ShapeString(tensor.shape()).c_str(), path.c_str());
    if (!inputs.emplace(alias, tensor).second) Fail("--input " + alias + " given twice");
  }
  const Outputs outputs = RunSignature(bundle, options.run, inputs);
  WriteOutputs(outputs, options.output_dir, "");
  if (options.repeat > 0) {
    std::vector<double> times;
    for (int i = 0; i < options.repeat; ++i) {
      double ms;
      RunSignature(bundle, options.run, inputs, &ms);
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    const size_t n = times.size();
    const double median = n % 2 ? times[n / 2] : (times[n / 2 - 1] + times[n / 2]) / 2;
    const int64_t batch = BatchOf(inputs);
    std::printf("timing signature=%s batch=%lld runs=%d median_ms=%.3f min_ms=%.3f "
                "max_ms=%.3f examples_per_s=%.1f\n",
                options.run.c_str(), static_cast<long long>(batch), options.repeat, median,
                times.front(), times.back(), batch / (median / 1000.0));
  }
}

// ------------------------------------------------------------------ warm-up records

// The protobuf wire format, just enough to walk the serving protos' fields.
struct Field {
  uint32_t number = 0;
  uint32_t wire_type = 0;
  uint64_t varint = 0;
  std::string bytes;  // length-delimited payload
};

uint64_t ReadVarint(const std::string& data, size_t* at) {
  uint64_t value = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (*at >= data.size()) Fail("truncated protobuf varint");
    const unsigned char byte = data[(*at)++];
    value |= uint64_t{byte & 0x7fu} << shift;
    if (!(byte & 0x80)) return value;
  }
  Fail("malformed protobuf varint");
}

std::vector<Field> Fields(const std::string& data, const std::string& message) {
  std::vector<Field> fields;
  size_t at = 0;
  try {
    while (at < data.size()) {
      Field field;
      const uint64_t key = ReadVarint(data, &at);
      field.number = static_cast<uint32_t>(key >> 3);
      field.wire_type = static_cast<uint32_t>(key & 7);
      switch (field.wire_type) {
        case 0:
          field.varint = ReadVarint(data, &at);
          break;
        case 1:
        case 5: {
          const size_t size = field.wire_type == 1 ? 8 : 4;
          if (at + size > data.size()) Fail("truncated fixed-size field");
          at += size;
          break;
        }
        case 2: {
          const uint64_t size = ReadVarint(data, &at);
          if (size > data.size() - at) Fail("truncated length-delimited field");
          field.bytes = data.substr(at, size);
          at += size;
          break;
        }
        default:
          Fail("unsupported wire type " + std::to_string(field.wire_type));
      }
      fields.push_back(std::move(field));
    }
  } catch (const Failure& failure) {
    Fail("cannot parse " + message + ": " + failure.message);
  }
  return fields;
}

struct WarmupRequest {
  std::string signature_name;
  std::map<std::string, Tensor> inputs;
  std::vector<std::string> output_filter;
};

// tensorflow.serving.PredictionLog{predict_log (6): PredictLog{request (1):
// PredictRequest{model_spec (1): ModelSpec{signature_name (3)},
// inputs (2): map<string, TensorProto>, output_filter (3)}}}
WarmupRequest ParsePredictionLog(const std::string& record) {
  WarmupRequest request;
  bool predict_log = false, has_request = false;
  for (const auto& log : Fields(record, "PredictionLog")) {
    if (log.number == 2 || log.number == 3 || log.number == 4 || log.number == 5 ||
        log.number == 7)
      Fail("not a predict_log (field " + std::to_string(log.number) +
           "): only PredictLog records are replayed (the export's signatures are all Predict)");
    if (log.number != 6 || log.wire_type != 2) continue;
    predict_log = true;
    for (const auto& predict : Fields(log.bytes, "PredictLog")) {
      if (predict.number != 1 || predict.wire_type != 2) continue;
      has_request = true;
      for (const auto& field : Fields(predict.bytes, "PredictRequest")) {
        if (field.wire_type != 2) continue;
        if (field.number == 1) {  // model_spec
          for (const auto& spec : Fields(field.bytes, "ModelSpec")) {
            if (spec.number == 3 && spec.wire_type == 2) request.signature_name = spec.bytes;
          }
        } else if (field.number == 2) {  // inputs map entry {key (1), value (2)}
          std::string key, value;
          for (const auto& entry : Fields(field.bytes, "PredictRequest.inputs entry")) {
            if (entry.number == 1 && entry.wire_type == 2) key = entry.bytes;
            if (entry.number == 2 && entry.wire_type == 2) value = entry.bytes;
          }
          tensorflow::TensorProto proto;
          if (!proto.ParseFromString(value)) Fail("tensor parsing error: " + key);
          Tensor tensor;
          if (!tensor.FromProto(proto)) Fail("tensor parsing error: " + key);
          request.inputs[key] = tensor;
        } else if (field.number == 3) {
          request.output_filter.push_back(field.bytes);
        }
      }
    }
  }
  if (!predict_log) Fail("the record holds no predict_log");
  if (!has_request) Fail("the predict_log holds no request");
  return request;
}

void Warmup(const tensorflow::SavedModelBundle& bundle, const Options& options) {
  const std::string path = options.version_dir + "/" + kWarmupFile;
  tensorflow::Env* env = tensorflow::Env::Default();
  if (!env->FileExists(path).ok())
    Fail("no warm-up file at " + path + " (TF Serving would load the version without warm-up)");
  std::unique_ptr<tensorflow::RandomAccessFile> file;
  Check(env->NewRandomAccessFile(path, &file), path);
  tensorflow::io::RecordReader reader(file.get());
  uint64_t offset = 0;
  int count = 0;
  for (;; ++count) {
    tensorflow::tstring record;
    const absl::Status status = reader.ReadRecord(&offset, &record);
    if (absl::IsOutOfRange(status)) break;
    Check(status, path + ": record " + std::to_string(count));
    if (count >= kMaxWarmupRecords)
      Fail(path + ": more than " + std::to_string(kMaxWarmupRecords) +
           " warm-up records (TF Serving's limit)");
    const std::string context = path + ": record " + std::to_string(count);
    try {
      const WarmupRequest request = ParsePredictionLog(std::string(record));
      const std::string name =
          request.signature_name.empty() ? kDefaultSignature : request.signature_name;
      std::printf("record %d: signature %s\n", count, name.c_str());
      for (const auto& [alias, tensor] : request.inputs)
        std::printf("  input %s: %s %s\n", alias.c_str(), DtypeName(tensor.dtype()).c_str(),
                    ShapeString(tensor.shape()).c_str());
      Outputs outputs = RunSignature(bundle, name, request.inputs);
      if (!request.output_filter.empty()) {
        Outputs kept;
        for (const auto& alias : request.output_filter) {
          const auto found = std::find_if(outputs.begin(), outputs.end(),
                                          [&](const auto& o) { return o.first == alias; });
          if (found == outputs.end())
            Fail("output tensor alias not found in signature: " + alias);
          kept.push_back(*found);
        }
        outputs = kept;
      }
      WriteOutputs(outputs, options.output_dir, std::to_string(count) + "_" + name + "_");
    } catch (const Failure& failure) {
      Fail(context + ": " + failure.message);
    }
  }
  if (count == 0) Fail(path + " holds no records");
  std::printf("warm-up: %d records replayed\n", count);
}

// ------------------------------------------------------------------ command line

[[noreturn]] void Usage(const std::string& problem) {
  std::fprintf(stderr,
               "error: %s\n"
               "usage: saved_model_check VERSION_DIR [--run=SIGNATURE --input=ALIAS=FILE.npy... "
               "[--repeat=N]] [--warmup] [--output_dir=DIR] [--intra_op_threads=N] "
               "[--inter_op_threads=N]\n",
               problem.c_str());
  std::exit(2);
}

int ParseInt(const std::string& flag, const std::string& text, int minimum) {
  try {
    size_t used;
    const int value = std::stoi(text, &used);
    if (used == text.size() && value >= minimum) return value;
  } catch (const std::exception&) {
  }
  Usage(flag + "=" + text + ": expected an integer >= " + std::to_string(minimum));
}

Options ParseArgs(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const size_t eq = arg.find('=');
    const std::string flag = arg.substr(0, eq);
    const std::string value = eq == std::string::npos ? "" : arg.substr(eq + 1);
    if (arg.rfind("--", 0) != 0) {
      if (!options.version_dir.empty()) Usage("more than one VERSION_DIR");
      options.version_dir = arg;
    } else if (flag == "--run") {
      options.run = value;
    } else if (flag == "--input") {
      const size_t split = value.find('=');
      if (split == std::string::npos || split == 0) Usage("--input takes ALIAS=FILE.npy");
      options.inputs.emplace_back(value.substr(0, split), value.substr(split + 1));
    } else if (flag == "--output_dir") {
      options.output_dir = value;
    } else if (flag == "--repeat") {
      options.repeat = ParseInt(flag, value, 1);
    } else if (arg == "--warmup") {
      options.warmup = true;
    } else if (flag == "--intra_op_threads") {
      options.intra_op_threads = ParseInt(flag, value, 0);
    } else if (flag == "--inter_op_threads") {
      options.inter_op_threads = ParseInt(flag, value, 0);
    } else {
      Usage("unknown flag " + arg);
    }
  }
  if (options.version_dir.empty()) Usage("VERSION_DIR is required");
  if (options.warmup && !options.run.empty()) Usage("--warmup and --run exclude each other");
  if (options.run.empty() && (!options.inputs.empty() || options.repeat))
    Usage("--input and --repeat need --run=SIGNATURE");
  if (!options.run.empty() && options.inputs.empty())
    Usage("--run needs --input=ALIAS=FILE.npy");
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  const Options options = ParseArgs(argc, argv);
  try {
    if (!options.output_dir.empty())
      Check(tensorflow::Env::Default()->RecursivelyCreateDir(options.output_dir),
            options.output_dir);
    const auto bundle = Load(options);
    if (options.warmup) {
      Warmup(*bundle, options);
    } else if (!options.run.empty()) {
      Run(*bundle, options);
    } else {
      List(*bundle);
    }
  } catch (const Failure& failure) {
    std::fflush(stdout);
    std::fprintf(stderr, "error: %s\n", failure.message.c_str());
    return 1;
  }
  return 0;
}
