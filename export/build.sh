#!/usr/bin/env bash
# Builds export/saved_model_check.cc against the TensorFlow pip wheel: its
# headers (site-packages/tensorflow/include) and its C++ libraries
# (libtensorflow_cc.so.2, libtensorflow_framework.so.2), found with
# tf.sysconfig. No Bazel, no TensorFlow source tree, no network.
#
#   export/build.sh [OUTPUT]     (default: export/saved_model_check)
#
# PYTHON (default python3) must import tensorflow; CXX (default g++) must
# compile C++17. About a minute on 2 cores. The binary finds the libraries through its
# rpath, so it runs as long as that TensorFlow installation stays in place.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/saved_model_check}"
python="${PYTHON:-python3}"
cxx="${CXX:-g++}"

if ! command -v "$cxx" >/dev/null; then
  echo "error: no C++ compiler '$cxx' (Debian: apt-get install g++; or set CXX)" >&2
  exit 1
fi
# Line 1: the compile flags (-I as -isystem: the warnings of TensorFlow's
# headers are not this program's); line 2: the library directory.
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! config="$(TF_CPP_MIN_LOG_LEVEL=3 "$python" 2>"$log" -c '
import os, sys
import tensorflow as tf
flags, lib = tf.sysconfig.get_compile_flags(), tf.sysconfig.get_lib()
include = tf.sysconfig.get_include()
if not os.path.isfile(os.path.join(include, "tensorflow", "cc", "saved_model", "loader.h")):
  sys.exit(f"TensorFlow {tf.__version__} at {lib} has no C++ headers ({include})")
for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2"):
  if not os.path.isfile(os.path.join(lib, name)):
    sys.exit(f"TensorFlow {tf.__version__} at {lib} has no {name}")
print(" ".join("-isystem " + f[2:] if f.startswith("-I") else f for f in flags))
print(lib)
')"; then
  tail -n 20 "$log" >&2
  echo "error: $python could not give TensorFlow's C++ headers and libraries (above)" >&2
  exit 1
fi
compile_flags="$(sed -n 1p <<<"$config")"
lib="$(sed -n 2p <<<"$config")"

# --no-as-needed: main() calls only libtensorflow_framework's LoadSavedModel,
# but the session factory it needs (DirectSession) registers itself from
# libtensorflow_cc; linked "as needed", that library would be dropped and
# loading would fail with "No session factory registered".
# shellcheck disable=SC2086
"$cxx" $compile_flags -O2 -Wall -o "$out" "$here/saved_model_check.cc" \
    -L"$lib" -Wl,--no-as-needed -l:libtensorflow_cc.so.2 -l:libtensorflow_framework.so.2 \
    -Wl,--as-needed -Wl,-rpath,"$lib"
echo "$out"
