#!/bin/bash
# Diagnose a hanging tensor-parallel start on the device: Python stacks of every process after
# a delay (faulthandler on SIGABRT), NCCL's own log, the host's name resolution.
export PYTHONPATH=. PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1 NCCL_DEBUG=WARN
hostname; getent hosts "$(hostname)"; ip -4 addr 2>/dev/null | grep inet
run() {  # $1: label, $2: seconds before the stack dump
  timeout 200 python3 -m pytest -s -q -p no:cacheprovider -m multi_gpu -o log_cli=true \
     --log-cli-level=INFO "tests/engine/test_tensor_parallel.py::test_tp2_equals_tp1_greedy_and_logprobs" \
     > "$OUT/$1.log" 2>&1 &
  local pid=$! t=0
  while kill -0 $pid 2>/dev/null && [ $t -lt $2 ]; do sleep 1; t=$((t+1)); done
  if kill -0 $pid 2>/dev/null; then
    echo "$1: still running after $2 s, dumping stacks"
    pkill -ABRT -f multiprocessing.spawn; sleep 2; pkill -ABRT -f "pytest -s"; sleep 3
  fi
  wait $pid; echo "$1: rc=$?"; grep -E "passed|failed|Error" "$OUT/$1.log" | tail -5
}
run plain 110
export GLOO_SOCKET_IFNAME=lo
run gloo_lo 110
