#!/usr/bin/env bash
# On a machine with NVIDIA GPUs: does age_tf learn there, and how fast does it
# train? (issue 21, part 3). One run, within a time budget, ending with one
# markdown table:
#
#   1. learning: the README's digits command (AGE, 40 epochs, one GPU) in
#      float32, bfloat16 and float16 (Keras's LossScaleOptimizer: dynamic loss
#      scaling), each checked by tests/learning_test.py's own tests, called on
#      the run (pytest must be installed: requirements-test.txt):
#      reconstructions beat the untrained model 3x and the mean image by 25%,
#      var(e(g(z))) within 2x of 1/M, its KL estimate within 1.5 of the
#      uniform sphere's, samples as spread as test digits. bfloat16 is skipped
#      on GPUs that emulate it (compute capability below 8.0).
#   2. throughput: CIFAR-10 AGE and SVHN GALI-4 training steps at batch 64 and
#      256, XLA (--jit_compile) off and on, on one GPU (benchmarks/throughput.py).
#      The step is timed on a synthetic in-memory batch of the dataset's shape
#      (no download: the GPU machine may have no network, and a step's cost
#      does not depend on pixel values); the input pipeline alone is timed on
#      tfds mock_data examples at batch 256 without XLA.
#   3. mirrored: the batch-256 steps mirrored over every local GPU (the same
#      global batch, and 256 per GPU), against one GPU (whose row part 2 has).
#
#   bash benchmarks/gpu_check.sh                      # budget 540 s: fits a 10-minute slot
#   bash benchmarks/gpu_check.sh --budget=1800 --parts=throughput,mirrored
#
# Options:
#   --budget=SECONDS   the whole run, checks included, ends within it (default
#                      540). Each part gets a share (learning half, throughput
#                      35%, mirrored the rest; time a part leaves goes to the
#                      next); a step that no longer fits is reported as skipped,
#                      one cut short as timed out.
#   --parts=LIST       any of learning,throughput,mirrored (default all three)
#   --work_dir=DIR     model directories and logs (default: a new temporary
#                      directory, kept and named at the end)
#   --precisions=LIST  the learning runs' (default float32,bfloat16,float16)
#   --batches=LIST     throughput's global batch sizes (default 64,256); the
#                      mirrored rows use the last
#   --repeats=N --steps=N   throughput.py's timed runs and steps per run (3, 20)
#   --learning_steps=N train the digits runs N steps instead of the README's 40
#                      epochs (only to check this script: the learning
#                      thresholds then fail)
#   --allow_cpu        run without a GPU (only to check this script; slow)
# PYTHON=/path/to/python picks the interpreter (default: python, with age_tf's
# requirements, run from this checkout).
#
# Without a GPU it stops at once with one line "error: ..." on stderr and exit
# status 2: before importing TensorFlow when nvidia-smi is missing, fails or
# lists no GPU, or CUDA_VISIBLE_DEVICES hides them all; after, when
# TensorFlow lists no GPU. Exit status 0: every check that ran passed; 1: a
# learning check failed or a command failed; 2: it could not start.

set -uo pipefail

# Until a GPU is known to be there: shell builtins only (PATH may hold nothing).
die() {
  echo "error: $*" >&2
  exit 2
}

here="${BASH_SOURCE[0]}"
[[ "$here" == */* ]] || here="./$here"
cd "${here%/*}/.." || die "cannot enter the repository root above ${here%/*}"

budget=540
parts="learning,throughput,mirrored"
work_dir=""
repeats=3
steps=20
learning_steps=""
batches="64,256"
precisions="float32,bfloat16,float16"
allow_cpu=0
for arg in "$@"; do
  case "$arg" in
    --budget=*) budget="${arg#*=}" ;;
    --parts=*) parts="${arg#*=}" ;;
    --work_dir=*) work_dir="${arg#*=}" ;;
    --repeats=*) repeats="${arg#*=}" ;;
    --steps=*) steps="${arg#*=}" ;;
    --learning_steps=*) learning_steps="${arg#*=}" ;;
    --batches=*) batches="${arg#*=}" ;;
    --precisions=*) precisions="${arg#*=}" ;;
    --allow_cpu) allow_cpu=1 ;;
    -h | --help)
      while IFS= read -r line; do
        [[ "$line" == "#!"* ]] && continue
        [[ "$line" == "#"* ]] || break
        line="${line#\#}"
        echo "${line# }"
      done <benchmarks/gpu_check.sh
      exit 0 ;;
    *) die "unknown option $arg (see bash benchmarks/gpu_check.sh --help)" ;;
  esac
done
for value in "$budget" "$repeats" "$steps" ${learning_steps:+"$learning_steps"} ${batches//,/ }; do
  [[ "$value" =~ ^[1-9][0-9]*$ ]] || die "--budget, --repeats, --steps, --learning_steps and --batches take positive integers, not '$value'"
done
for part in ${parts//,/ }; do
  case "$part" in
    learning | throughput | mirrored) ;;
    *) die "unknown part '$part' in --parts=$parts (valid: learning, throughput, mirrored)" ;;
  esac
done
[[ -n "${parts//,/}" ]] || die "--parts names no part (valid: learning, throughput, mirrored)"
for precision in ${precisions//,/ }; do
  case "$precision" in
    float32 | bfloat16 | float16) ;;
    *) die "unknown precision '$precision' in --precisions=$precisions (valid: float32, bfloat16, float16)" ;;
  esac
done
wants() { [[ ",$parts," == *",$1,"* ]]; }

# 1. An NVIDIA GPU, before anything imports TensorFlow.
gpu_list="none (--allow_cpu)"
if (( ! allow_cpu )); then
  command -v nvidia-smi >/dev/null 2>&1 ||
    die "no NVIDIA GPU visible: nvidia-smi is not on PATH (no NVIDIA driver here). Run this on a machine with an NVIDIA GPU and its driver installed, nvidia-smi on PATH."
  query=(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)
  command -v timeout >/dev/null 2>&1 && query=(timeout 30 "${query[@]}")
  gpu_list="$("${query[@]}" 2>&1)"
  status=$?
  (( status == 0 )) ||
    die "no NVIDIA GPU visible: nvidia-smi failed (exit $status: ${gpu_list%%$'\n'*}). Fix the NVIDIA driver until nvidia-smi lists the GPUs."
  [[ -n "${gpu_list//[[:space:]]/}" ]] ||
    die "no NVIDIA GPU visible: nvidia-smi lists no GPU. Run this on a machine with an NVIDIA GPU."
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" && ( -z "$CUDA_VISIBLE_DEVICES" || "$CUDA_VISIBLE_DEVICES" == -1* ) ]]; then
    die "no NVIDIA GPU visible: CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES' hides every GPU from TensorFlow. Unset it (or list GPU indices, e.g. CUDA_VISIBLE_DEVICES=0)."
  fi
fi

# 2. TensorFlow sees them.
PYTHON="${PYTHON:-python}"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
probe="$("$PYTHON" -c '
import os
import sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
gpus = tf.config.list_physical_devices("GPU")
caps = [tf.config.experimental.get_device_details(g).get("compute_capability") for g in gpus]
caps = [tuple(c) for c in caps if c]
low = ".".join(map(str, min(caps))) if caps else "-"
if gpus:  # as age_tf.methods.base.native_bfloat16: compute capability 8.0 or later
  bf16 = int(bool(caps) and min(caps) >= (8, 0))
else:  # or a CPU with AVX512_BF16 or AMX
  try:
    with open("/proc/cpuinfo") as f:
      flags = set(next((l for l in f if l.startswith("flags")), "").split())
  except OSError:
    flags = set()
  bf16 = int(bool(flags & {"avx512_bf16", "amx_bf16"}))
print("probe:", len(gpus), tf.__version__, int(tf.test.is_built_with_cuda()), low, bf16)
' 2>&1)"
probe_line="$(grep '^probe: ' <<<"$probe" | tail -n 1)"
[[ -n "$probe_line" ]] ||
  die "$PYTHON cannot import tensorflow (${probe##*$'\n'}); activate age_tf's virtualenv (pip install -r requirements.txt) or set PYTHON=/path/to/python"
read -r _ tf_gpus tf_version tf_cuda min_cc native_bf16 <<<"$probe_line"
if (( tf_gpus == 0 && ! allow_cpu )); then
  if (( tf_cuda )); then
    die "no NVIDIA GPU visible to TensorFlow: nvidia-smi lists $(grep -c . <<<"$gpu_list") GPU(s) but TensorFlow $tf_version lists none (its CUDA libraries or the driver do not load: run $PYTHON -c \"import tensorflow as tf; print(tf.config.list_physical_devices('GPU'))\" for the reason; pip install 'tensorflow[and-cuda]==$tf_version' brings the CUDA libraries)."
  fi
  die "no NVIDIA GPU visible to TensorFlow: TensorFlow $tf_version here is built without CUDA. Install its CUDA build: pip install 'tensorflow[and-cuda]==$tf_version'."
fi

# 3. The checks.
if [[ -z "$work_dir" ]]; then
  work_dir="$(mktemp -d "${TMPDIR:-/tmp}/age_tf_gpu_check.XXXXXX")" || die "mktemp failed"
fi
logs="$work_dir/logs"
mkdir -p "$logs" || die "cannot create $logs"
rows=()
failures=0
one_device="1 GPU"
(( tf_gpus == 0 )) && one_device="CPU (--allow_cpu)"

# One table row: part, check, precision, batch, XLA, devices, result, details.
row() {
  local details="$8"
  [[ "$7" == skipped* ]] && details="-"  # nothing ran: no log to name
  rows+=("| ${1} | ${2} | ${3} | ${4} | ${5} | ${6} | ${7} | ${details} |")
}

# Each selected part's deadline (seconds since the start): cumulative shares.
declare -A share=([learning]=50 [throughput]=35 [mirrored]=15)
declare -A deadline
total_share=0
for part in learning throughput mirrored; do wants "$part" && total_share=$((total_share + share[$part])); done
reserve=5  # the table
so_far=0
for part in learning throughput mirrored; do
  if wants "$part"; then
    so_far=$((so_far + share[$part]))
    deadline[$part]=$(( (budget - reserve) * so_far / total_share ))
  fi
done

# run_step LOG DEADLINE NEED COMMAND...: runs COMMAND with its output in LOG,
# cut short at DEADLINE; not run (step_status=skipped) with under NEED
# seconds left. Sets step_status (ok, skipped, timed out, failed) and
# step_seconds.
run_step() {
  local log="$1" until="$2" need="$3" began=$SECONDS
  shift 3
  local left=$((until - SECONDS))
  step_seconds=0
  if (( left < need )); then
    step_status="skipped"
    echo "skipped (time budget): $*" >"$log"
    return
  fi
  echo "[$(date +%T)] $* (at most ${left} s; log $log)" >&2
  timeout --kill-after=10 "$left" "$@" >"$log" 2>&1
  local status=$?
  step_seconds=$((SECONDS - began))
  case $status in
    0) step_status="ok" ;;
    124 | 137) step_status="timed out" ;;
    *) step_status="failed"; failures=$((failures + 1)) ;;
  esac
}

# The last line of a log that says what went wrong.
last_error() {
  grep -E 'error|Error|ERROR' "$1" | tail -n 1 | cut -c1-160 | tr '|' '/'
}

not_run() {  # the result cell of a step that did not finish
  case "$step_status" in
    skipped) echo "skipped (time budget)" ;;
    "timed out") echo "timed out after ${step_seconds} s (time budget)" ;;
    *) echo "FAILED" ;;
  esac
}

# -- 1. learning ------------------------------------------------------------

# tests/learning_test.py's checks, run on a trained run: each of its tests
# that takes only the learning_run fixture, called with (model_dir, None).
read -r -d '' LEARNING_CHECK <<'EOF'
"""Runs tests/learning_test.py's learning checks on trained digits runs: argv = PRECISION MODEL_DIR ..."""
import contextlib
import inspect
import io
import os
import sys

sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "tests")]  # the repository root
import learning_test  # pylint: disable=g-import-not-at-top
from age_tf import checkpointing  # pylint: disable=g-import-not-at-top

checks = [(name, test) for name, test in sorted(vars(learning_test).items())
          if name.startswith("test_") and callable(test)
          and list(inspect.signature(test).parameters) == ["learning_run"]]
assert checks, "tests/learning_test.py has no test taking only learning_run"
failed = 0
for precision, model_dir in zip(sys.argv[1::2], sys.argv[2::2]):
  config = checkpointing.saved_config(model_dir)
  assert config.mixed_precision == precision, (config.mixed_precision, precision)
  failing, printed = [], []
  for name, test in checks:
    out = io.StringIO()
    try:
      with contextlib.redirect_stdout(out):
        test((model_dir, None))
    except AssertionError as e:
      failing.append(name + (f" ({str(e).splitlines()[0]})" if str(e) else ""))
    printed += [line.strip() for line in out.getvalue().splitlines() if line.strip()]
  failed += bool(failing)
  verdict = "FAIL: " + ", ".join(failing) if failing else f"pass ({len(checks)} checks)"
  print(f"ROW\t{precision}\t{config.batch_size}\t{verdict}\t{'; '.join(printed)}"
        .replace("|", "/"))
sys.exit(1 if failed else 0)
EOF

if wants learning; then
  read -r -a precisions <<<"${precisions//,/ }"
  trained=()
  declare -A learn_seconds learn_status
  for precision in "${precisions[@]}"; do
    if [[ "$precision" == bfloat16 && "$native_bf16" != 1 ]]; then
      if (( tf_gpus )); then
        learn_status[$precision]="skipped (compute capability $min_cc < 8.0: bfloat16 is emulated)"
      else
        learn_status[$precision]="skipped (a CPU without AVX512_BF16 or AMX: bfloat16 is emulated)"
      fi
      continue
    fi
    model_dir="$work_dir/learning_$precision"
    rm -rf "$model_dir"
    # The README's digits command on one GPU (the learning tests' setting),
    # leaving 40 s for the check.
    run_step "$logs/learning_$precision.log" $((deadline[learning] - 40)) 45 \
      "$PYTHON" -m age_tf.train --method=age --dataset=digits --noexport --strategy=one_device \
      --mixed_precision="$precision" --model_dir="$model_dir" \
      ${learning_steps:+"--train_steps=$learning_steps"}
    learn_seconds[$precision]=$step_seconds
    if [[ "$step_status" == ok ]]; then
      trained+=("$precision" "$model_dir")
      learn_status[$precision]="trained"
    else
      learn_status[$precision]="$(not_run)"
      [[ "$step_status" == failed ]] && learn_status[$precision]+=": $(last_error "$logs/learning_$precision.log")"
    fi
  done
  declare -A learn_row
  if (( ${#trained[@]} )); then
    printf '%s\n' "$LEARNING_CHECK" >"$work_dir/learning_check.py"
    run_step "$logs/learning_check.log" "${deadline[learning]}" 15 \
      "$PYTHON" "$work_dir/learning_check.py" "${trained[@]}"
    [[ "$step_status" == failed ]] && grep -q '^ROW' "$logs/learning_check.log" &&
      failures=$((failures - 1))  # counted below, per failing run
    while IFS=$'\t' read -r _ precision batch verdict details; do
      learn_row[$precision]="$batch"$'\t'"$verdict"$'\t'"$details"
      [[ "$verdict" == FAIL* ]] && failures=$((failures + 1))
    done < <(grep '^ROW' "$logs/learning_check.log")
    check_status="$step_status"
  fi
  for precision in "${precisions[@]}"; do
    label="$precision"
    [[ "$precision" == float16 ]] && label="float16 (loss scaling)"
    check="AGE digits, the README's command"
    [[ -n "$learning_steps" ]] && check="AGE digits, $learning_steps steps"
    if [[ "${learn_status[$precision]}" != trained ]]; then
      row learning "$check" "$label" default off "$one_device" "${learn_status[$precision]}" \
        "see $logs/learning_$precision.log"
    elif [[ -n "${learn_row[$precision]:-}" ]]; then
      IFS=$'\t' read -r batch verdict details <<<"${learn_row[$precision]}"
      row learning "$check" "$label" "$batch" off "$one_device" "$verdict" \
        "trained in ${learn_seconds[$precision]} s; $details"
    else
      step_status="$check_status"
      row learning "$check" "$label" default off "$one_device" "check $(not_run)" \
        "trained in ${learn_seconds[$precision]} s; $(last_error "$logs/learning_check.log") (see $logs/learning_check.log)"
    fi
  done
fi

# -- 2. throughput and 3. mirrored ------------------------------------------

trim() { local s="$1"; s="${s#"${s%%[![:space:]]*}"}"; echo "${s%"${s##*[![:space:]]}"}"; }

declare -A images_per_second  # "method dataset batch xla strategy" -> images/s

# throughput LABEL METHOD DATASET BATCH XLA STRATEGY PART DEADLINE [ARGS...]
throughput() {
  local label="$1" method="$2" dataset="$3" batch="$4" xla="$5" strategy="$6" part="$7" until="$8"
  shift 8
  local name="${method}_${dataset}_${batch}_xla${xla}_${strategy}"
  local log="$logs/throughput_$name.log" flags=()
  [[ "$xla" == on ]] && flags+=(--jit_compile)
  run_step "$log" "$until" 25 "$PYTHON" benchmarks/throughput.py --method="$method" \
    --dataset="$dataset" --batch_size="$batch" --strategy="$strategy" --repeats="$repeats" \
    --steps="$steps" "${flags[@]}" "$@"
  local devices="$one_device"
  [[ "$strategy" == mirrored ]] && devices="$tf_gpus GPU(s), mirrored"
  (( tf_gpus == 0 )) && [[ "$strategy" == mirrored ]] && devices="CPU, mirrored (--allow_cpu)"
  local line
  line="$(grep -E "^\| $method \| $dataset \|" "$log" | tail -n 1)"
  if [[ "$step_status" != ok || -z "$line" ]]; then
    local why=""
    [[ "$step_status" == failed || ( "$step_status" == ok && -z "$line" ) ]] && why="$(last_error "$log")"
    [[ "$step_status" == ok ]] && { step_status=failed; failures=$((failures + 1)); }
    row "$part" "$label" float32 "$batch" "$xla" "$devices" "$(not_run)" "${why:+$why; }see $log"
    return
  fi
  local cells
  IFS='|' read -r -a cells <<<"$line"
  local replicas median range rate gflops peak data
  replicas="$(trim "${cells[3]}")"; median="$(trim "${cells[12]}")"; range="$(trim "${cells[13]}")"
  rate="$(trim "${cells[14]}")"; gflops="$(trim "${cells[16]}")"; peak="$(trim "${cells[17]}")"
  data="$(trim "${cells[18]}")"
  images_per_second["$method $dataset $batch $xla $strategy"]="$rate"
  local details="s/step $median (range $range); $gflops GFLOP/s, $peak of the measured conv peak"
  if [[ "$data" =~ ^([0-9.]+)\ \(([0-9.]+x)\) ]]; then
    details+="; input pipeline alone ${BASH_REMATCH[1]} images/s (${BASH_REMATCH[2]} the step's)"
    [[ "$data" == *mock* ]] && details+=" on tfds mock_data"
  fi
  [[ "$strategy" == mirrored ]] && details+="; $replicas replica(s)"
  row "$part" "$label" float32 "$batch" "$xla" "$devices" "$rate images/s" "$details"
}

models=("age cifar10 CIFAR-10 AGE" "gali4 svhn SVHN GALI-4")
big="${batches##*,}"  # the mirrored rows' batch
if wants throughput; then
  for model in "${models[@]}"; do
    read -r method dataset title <<<"$model"
    for batch in ${batches//,/ }; do
      for xla in off on; do
        extra=()
        # The input pipeline alone, once per dataset: mock_data examples.
        [[ "$batch" == "$big" && "$xla" == off ]] && extra=(--mock_examples=2000 --data_batches=50)
        throughput "$title (synthetic batch)" "$method" "$dataset" "$batch" "$xla" one_device \
          throughput "${deadline[throughput]}" "${extra[@]}"
      done
    done
  done
fi

if wants mirrored; then
  for model in "${models[@]}"; do
    read -r method dataset title <<<"$model"
    one="${images_per_second["$method $dataset $big off one_device"]:-}"
    if [[ -z "$one" ]]; then  # part 2 did not run it: the one-GPU baseline first
      throughput "$title (synthetic batch)" "$method" "$dataset" "$big" off one_device \
        mirrored "${deadline[mirrored]}"
      one="${images_per_second["$method $dataset $big off one_device"]:-}"
    fi
    mirrored_batches=("$big")  # the same global batch, and (with 2+ GPUs) as much per GPU
    (( tf_gpus > 1 )) && mirrored_batches+=($((big * tf_gpus)))
    for batch in "${mirrored_batches[@]}"; do
      label="$title (synthetic batch), global batch $batch"
      throughput "$label" "$method" "$dataset" "$batch" off mirrored "mirrored" "${deadline[mirrored]}"
      many="${images_per_second["$method $dataset $batch off mirrored"]:-}"
      if [[ -n "$one" && -n "$many" && "$one" != 0 ]]; then
        speedup="$(awk -v a="$many" -v b="$one" 'BEGIN { printf "%.2f", a / b }')"
        last=$((${#rows[@]} - 1))
        rows[$last]="${rows[$last]% |}; ${speedup}x the $one images/s of $one_device at batch $big |"
      fi
    done
  done
fi

# -- the table ----------------------------------------------------------------

gpus_line="$(grep -c . <<<"$gpu_list") x ${gpu_list%%$'\n'*} (name, memory, driver)"
(( allow_cpu && tf_gpus == 0 )) && gpus_line="no GPU (--allow_cpu: on the CPU)"
echo
echo "GPU check $(date -u +%Y-%m-%dT%H:%MZ): $gpus_line; TensorFlow $tf_version" \
     "sees $tf_gpus GPU(s), lowest compute capability $min_cc; budget $budget s, took $SECONDS s;" \
     "logs and model directories in $work_dir. Throughput and mirrored rows time training steps on a" \
     "synthetic in-memory batch of the dataset's shape (benchmarks/throughput.py; CIFAR-10 and SVHN" \
     "are not downloaded); the input pipeline alone reads tfds mock_data examples."
echo
echo "| part | check | precision | batch | XLA | devices | result | details |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
(( failures == 0 ))
exit $?
