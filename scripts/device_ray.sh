#!/usr/bin/env bash
# The Ray driver's overhead on one GPU (issue 20): the 8B throughput workload (1000 prompts,
# 256 tokens in, 256 out, dummy weights) through the runner, on the plain local backend and on
# one Ray replica (engine.backend=ray, engine.data_parallel_size=1), side by side in one lease.
# Target: the Ray run's tokens/s at least 0.97 x the local run's.
#
#   here:   bash scripts/stage_ray_wheels.sh      (ray, hydra-core, omegaconf, jsonschema -> .whl/)
#   there:  device run, carry [".whl"]:  bash scripts/device_ray.sh
#   REPEATS=2 runs local, ray, ray, local (drift cancels in the mean; about 9 minutes, near one
#   call's limit); default 1: local, ray (about 5 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || { echo "stage the wheels first: scripts/stage_ray_wheels.sh"; exit 1; }
export PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-outputs/device}
RUNS=$OUT/ray_overhead
mkdir -p "$RUNS"
nvidia-smi -L
REPEATS=${REPEATS:-1}
COMMON=(mode=bench model=llama3_8b engine.load_format=dummy bench.workload=throughput
        bench.num_prompts=1000 bench.input_len=256 bench.output_len=256
        engine.max_num_seqs=512 engine.max_num_batched_tokens=16384 use_tqdm=false
        "output_root=$RUNS")
one() {  # name extra-overrides...
  local name=$1; shift
  timeout 540 python3 -m runner "${COMMON[@]}" "experiment=$name" "$@" > "$RUNS/$name.log" 2>&1
  echo "== $name (rc $?)"; grep -E "^run |error" "$RUNS/$name.log" | tail -3
}
order=(local ray)
[ "$REPEATS" = 2 ] && order=(local ray ray2 local2)
# CALL_S=1.0 adds a one-replica run with replica calls of that length (default 0.05 s);
# CPUS=1 one whose replica asks Ray for 8 CPUs (Ray sets the actor's OMP_NUM_THREADS from it)
[ -n "${CALL_S:-}" ] && order+=(raycall)
[ -n "${CPUS:-}" ] && order+=(raycpus)
for name in "${order[@]}"; do
  case $name in
    local*) one "$name" ;;
    raycall) one "$name" engine.backend=ray engine.data_parallel_size=1 \
                 "distributed.replica_call_s=$CALL_S" ;;
    raycpus) one "$name" engine.backend=ray engine.data_parallel_size=1 \
                 distributed.num_cpus_per_replica=8 ;;
    ray*) one "$name" engine.backend=ray engine.data_parallel_size=1 ;;
  esac
done
python3 - "$RUNS" <<'PY'
import glob, json, os, sys
tok = {}
for path in glob.glob(os.path.join(sys.argv[1], "*", "*", "benchmark.json")):
    name = path.split(os.sep)[-3]
    engine = json.load(open(path))["engine"]
    with open(os.path.join(sys.argv[1], f"{name}.benchmark.json"), "w") as f:
        json.dump(engine, f, indent=1)      # flat beside the logs: the device tool brings it
    tok.setdefault(name.rstrip("2"), []).append(engine["total_tokens_per_s"])
    print(f"{name:8s} total {engine['total_tokens_per_s']:10.1f} tok/s  output "
          f"{engine['output_tokens_per_s']:10.1f} tok/s  elapsed {engine['elapsed_s']:.2f} s")
    print("         " + "  ".join(f"{k} {engine[k]}" for k in (
        "num_steps", "schedule_s", "execute_s", "process_s", "output_proc_s", "prepare_s",
        "forward_s", "sample_s") if k in engine))
if "local" in tok:
    local = sum(tok["local"]) / len(tok["local"])
    for name in ("ray", "raycall", "raycpus"):
        if name in tok:
            ray = sum(tok[name]) / len(tok[name])
            print(f"local {local:.1f} tok/s, {name} (1 replica) {ray:.1f} tok/s: ratio "
                  f"{ray / local:.4f} (overhead {100 * (1 - ray / local):+.2f}%; target <= 3%)")
PY
