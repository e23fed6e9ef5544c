#!/usr/bin/env bash
# The README's Speed tables: every benchmark below in sequence, one at a time
# (run it on an otherwise idle machine). Takes about 20 minutes on 2 cores.
#
#   bash benchmarks/speed_table.sh 2>&1 | tee /tmp/speed.log
#   TORCH_PYTHON=/path/to/torch-venv/bin/python bash benchmarks/speed_table.sh   # with the authors' row
#
# Run it with age_tf's virtualenv active (or PYTHON=/path/to/python). TORCH_PYTHON,
# if set, is a Python with PyTorch for pytorch_reference.py (the authors'
# iteration, timed before and after the TensorFlow rows).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
if ! "$PYTHON" -c "import tensorflow" 2>/dev/null; then
  echo "error: $PYTHON cannot import tensorflow; activate age_tf's virtualenv or set PYTHON" >&2
  exit 2
fi
# Runs a benchmark; prints the lines matching $1, or its last lines if it failed.
run() {
  local pattern="$1" out
  shift
  out="$(mktemp)"
  if "$@" >"$out" 2>&1; then
    grep -E -A4 "$pattern" "$out" || true
  else
    echo "FAILED: $*"
    tail -n 20 "$out"
  fi
  rm -f "$out"
}
torch_row() {
  if [ -n "${TORCH_PYTHON:-}" ]; then
    echo "== authors' PyTorch iteration ($(date +%T))"
    run '^torch' "$TORCH_PYTHON" benchmarks/pytorch_reference.py
  fi
}
throughput() {
  echo "== throughput.py $* ($(date +%T))"
  run '^machine|^measured now|^input pipeline' "$PYTHON" benchmarks/throughput.py "$@"
}
ablation() {
  echo "== ablation.py $* ($(date +%T))"
  run '^[a-z_0-9]+: ' "$PYTHON" benchmarks/ablation.py "$@"
}

torch_row
# The authors' CIFAR-10 setting; the pipeline on mock CIFAR-10 examples.
throughput --dataset=cifar10 --repeats=5 --steps=5 --mock_examples=5000
throughput --dataset=cifar10 --repeats=5 --steps=5 --mixed_precision=bfloat16 --mock_examples=5000
throughput --dataset=cifar10 --repeats=3 --steps=5 --jit_compile
throughput --dataset=cifar10 --repeats=3 --steps=5 --steps_per_loop=1
echo "(next: TF_NUM_INTEROP_THREADS=1, one op at a time)"
TF_NUM_INTEROP_THREADS=1 throughput --dataset=cifar10 --repeats=3 --steps=5
# digits (the README's first command) and the other methods.
for method in age ali gali4 gali_mix; do
  throughput --dataset=digits --method="$method" --repeats=5 --steps=10
done
throughput --dataset=digits --repeats=5 --steps=10 --mixed_precision=bfloat16
throughput --method=gali4 --dataset=svhn --repeats=3 --steps=3 --mock_examples=5000
# Each change against its baseline, in one process.
ablation --change=batch_norm --dataset=cifar10
ablation --change=batch_norm --dataset=cifar10 --mixed_precision=bfloat16
ablation --change=transposed_conv --dataset=cifar10
ablation --change=transposed_conv --dataset=cifar10 --mixed_precision=bfloat16
ablation --change=transposed_conv --method=gali4 --dataset=svhn
ablation --change=filter_gradient --dataset=cifar10 --mixed_precision=bfloat16
ablation --change=jit_compile --dataset=cifar10
ablation --change=bfloat16 --dataset=cifar10
torch_row
echo "== done ($(date +%T))"
