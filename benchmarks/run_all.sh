#!/usr/bin/env bash
# Every benchmark behind benchmarks/README.md, on this machine (CPU, fp32 unless stated, 2 threads).
#
#   benchmarks/run_all.sh            # all runs (~1 h on 2 quiet cores); results in benchmarks/results/*.json
#   ONLY="b16_bs2 ref_train_bs2" benchmarks/run_all.sh   # a subset (names below)
#   WAIT_QUIET=1 benchmarks/run_all.sh                   # before each run wait until the 1-min load < 0.5
#   REF_HARNESS=/tmp/jitref/harness.py                   # reference side (a local, uncommitted harness around
#                                                        # a checkout of LTH14/JiT); skipped when absent
# Timings are only meaningful on a quiet machine: each JSON records the load average at start and end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
T=${THREADS:-2}
OUT=benchmarks/results
REF_HARNESS=${REF_HARNESS:-/tmp/jitref/harness.py}
mkdir -p "$OUT"

log() { echo "[$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)] $*" >&2; }
want() { [[ -z "${ONLY:-}" ]] || [[ " $ONLY " == *" $1 "* ]]; }
quiet() {
  [[ "${WAIT_QUIET:-0}" == 1 ]] || return 0
  local n=0
  while awk '{exit !($1 >= 0.5)}' /proc/loadavg && ((n < ${QUIET_TIMEOUT:-3600})); do sleep 10; n=$((n + 10)); done
}
bench() { # name, jitkit bench args...
  local name=$1; shift
  want "$name" || return 0
  quiet
  log "$name: jitkit bench $*"
  "$PY" -m jitkit bench "$@" --threads "$T" --json --out "$OUT/$name.json" > /dev/null
}
ref() { # name, harness args... (REF_COMPILE=0|1 in the environment)
  local name=$1; shift
  want "$name" || return 0
  [[ -f "$REF_HARNESS" ]] || { log "$name: skipped (no reference harness at $REF_HARNESS)"; return 0; }
  quiet
  log "$name: reference $* (REF_COMPILE=${REF_COMPILE:-1})"
  local l0; l0=$(cut -d' ' -f1-3 /proc/loadavg)
  WARMUP=${REF_WARMUP:-4} THREADS=$T "$PY" "$REF_HARNESS" "$@" 2>/dev/null | tail -1 \
    | "$PY" -c "import json,sys; d=json.loads(sys.stdin.read()); d['loadavg_start']='$l0'.split(); \
d['loadavg_end']=open('/proc/loadavg').read().split()[:3]; print(json.dumps(d, indent=1))" > "$OUT/$name.json"
}

B16="--model JiT-B/16 --img-size 256"
# --- the targets: jitkit and the reference side by side ----------------------------------------------------
bench b16_bs2 $B16 --batch-size 2 --mode train,forward --repeats 5
bench b16_bs2_compile $B16 --batch-size 2 --mode train,forward --repeats 5 --warmup 5 --compile
REF_COMPILE=1 ref ref_train_bs2 train 2
REF_COMPILE=0 ref ref_train_bs2_eager train 2
REF_COMPILE=1 ref ref_forward_bs2 forward 2
REF_COMPILE=0 ref ref_forward_bs2_eager forward 2
bench b16_bs8 $B16 --batch-size 8 --mode train,forward --repeats 3
REF_COMPILE=1 ref ref_mem_bs8 mem 8
REF_COMPILE=1 ref ref_train_bs8 train 8
bench b16_sample_bs4 $B16 --batch-size 4 --mode sample --sample-steps 50 --cfg 2.9
bench b16_sample_bs4_compile $B16 --batch-size 4 --mode sample --sample-steps 50 --cfg 2.9 --compile
REF_COMPILE=1 ref ref_sample_bs4 sample 4 50
REF_COMPILE=0 ref ref_sample_bs4_eager sample 4 50
# --- the small shapes model (preset "shapes": JiT-T/4 at 16 px, 16 classes, batch 64, Heun 20, CFG 3) -----
bench shapes --model JiT-T/4 --img-size 16 --num-classes 16 --batch-size 64 --sample-steps 20 --cfg 3.0 \
  --repeats 10
# --- optimisations, before → after (ratios are over the first value) ----------------------------------------
bench cmp_attention_bs2 $B16 --batch-size 2 --mode train,forward --compare attention=math-fp32,sdpa
bench cmp_attention_bs8 $B16 --batch-size 8 --mode train --repeats 2 --compare attention=math-fp32,sdpa
bench cmp_optim $B16 --batch-size 2 --mode train --compare optim=loop,foreach,fused,fused-ema
bench cmp_ema $B16 --batch-size 2 --mode train --compare ema=loop,foreach,lerp
bench cmp_cfg $B16 --batch-size 4 --mode sample --sample-steps 10 --compare cfg_mode=separate,batched
bench cmp_item $B16 --batch-size 2 --mode train --compare item_sync=1,0
bench cmp_gradckpt_bs8 $B16 --batch-size 8 --mode train --repeats 2 --compare grad_checkpoint=0,1
bench cmp_channels_last $B16 --batch-size 2 --mode forward --compare channels_last=0,1
bench cmp_compile $B16 --batch-size 2 --mode train,forward --warmup 3 --compare compile=0,1
bench cmp_bf16 $B16 --batch-size 2 --mode train,forward --compare dtype=fp32,bf16
bench cmp_threads $B16 --batch-size 2 --mode forward --compare threads=1,2
if want rope; then quiet; log "rope micro"; "$PY" benchmarks/rope_micro.py --threads "$T" > "$OUT/rope.json"; fi
if want ema; then quiet; log "ema micro"; "$PY" benchmarks/ema_micro.py --threads "$T" > "$OUT/ema.json"; fi
if want planner; then log "planner"; "$PY" benchmarks/planner_table.py > "$OUT/planner.json"; fi
"$PY" benchmarks/make_table.py
log "done: tables in benchmarks/README.md"
