#!/usr/bin/env bash
# One-shot check on a GPU machine (at most 460 s of step limits):
# installs the CUDA jax wheel, then runs the inference benchmark (float32 and
# bfloat16, batch 1 and 8), the train-step benchmark (float32 and bfloat16)
# and the float32 parity tests on the fixtures. Logs go to $OUT (default
# ./device_check_logs); a summary of every step's exit status and time is in
# $OUT/summary.txt. Run from the repository root:
#
#   bash bench/device_check.sh
#
# Every step has its own time limit so that one slow step can not eat the
# budget of the others; the figures of a step that timed out are missing
# from its log, the summary says so.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-device_check_logs}"
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
export XLA_PYTHON_CLIENT_PREALLOCATE=false
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {  # step NAME LIMIT_S COMMAND...
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  echo "== $name: $*" | tee -a "$SUMMARY"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "   rc=$rc ($((SECONDS - t0)) s, limit $limit s)" | tee -a "$SUMMARY"
  tail -n 4 "$OUT/$name.log" | sed 's/^/   | /' | tee -a "$SUMMARY"
}

step install 90 python -m pip install -q "jax[cuda12]==0.10.2"
step devices 20 python -c "import jax; print(jax.devices())"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
# Inference, end to end (preprocess, device program, mask paste).
step infer_f32 65 python -m bench.inference --dtype float32 --batch-sizes 1,8 --iters 10
step infer_bf16 65 python -m bench.inference --dtype bfloat16 --batch-sizes 1,8 --iters 10
# Training step, 2 images of 800x1344 (one compile each, --steps timed).
step train_f32 65 python -m bench.train_step --dtype float32 --steps 10
step train_bf16 65 python -m bench.train_step --dtype bfloat16 --steps 10
# Float32 parity with MMDetection on the fixtures, on the GPU.
step parity 90 python -m pytest -q -x tests/test_parity.py -k r50_fpn
echo "logs: $OUT" | tee -a "$SUMMARY"
