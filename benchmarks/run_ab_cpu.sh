#!/usr/bin/env bash
# Before/after comparisons that stay meaningful on a busy machine: one thread, timed in process CPU seconds
# (`jitkit bench --threads 1 --clock cpu`), variants interleaved in one process; and peak memory, which does
# not depend on the load. Results in benchmarks/results/ab/*.json; the wall-clock runs are run_all.sh's.
#
#   benchmarks/run_ab_cpu.sh                 # all (~1 h at 1 thread)
#   ONLY="optim mem_b16_bs8" benchmarks/run_ab_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
OUT=benchmarks/results/ab
REF_HARNESS=${REF_HARNESS:-/tmp/jitref/harness.py}
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)] $*" >&2; }
want() { [[ -z "${ONLY:-}" ]] || [[ " $ONLY " == *" $1 "* ]]; }
ab() { # name, jitkit bench args...
  local name=$1; shift
  want "$name" || return 0
  log "$name: jitkit bench $* --threads 1 --clock cpu"
  "$PY" -m jitkit bench "$@" --threads 1 --clock cpu --json --out "$OUT/$name.json" > /dev/null
}
B16="--model JiT-B/16 --img-size 256"
# memory (load-independent): jitkit and the reference at batch 8, one fresh process each
ab mem_b16_bs8 $B16 --batch-size 8 --mode train --warmup 2 --repeats 1
if want ref_mem_bs8 && [[ -f "$REF_HARNESS" ]]; then
  for c in 0 1; do
    log "ref_mem_bs8 (REF_COMPILE=$c)"
    REF_COMPILE=$c THREADS=1 "$PY" "$REF_HARNESS" mem 8 2>/dev/null | tail -1 > "$OUT/ref_mem_bs8_compile$c.json"
  done
fi
ab attention_bs8 $B16 --batch-size 8 --mode train --warmup 0 --repeats 1 --memory subprocess --compare attention=math-fp32,sdpa
ab gradckpt_bs8 $B16 --batch-size 8 --mode train --warmup 0 --repeats 1 --memory subprocess --compare grad_checkpoint=0,1
# jitkit vs the reference in CPU seconds at one thread (indicative ratios for the targets while the machine is busy)
ab b16_bs2 $B16 --batch-size 2 --mode train,forward --repeats 3
ab b16_sample5_bs4 $B16 --batch-size 4 --mode sample --sample-steps 5 --cfg 2.9 --warmup 0
refab() { # name, harness args...
  local name=$1; shift
  want "$name" && [[ -f "$REF_HARNESS" ]] || return 0
  for c in 0 1; do
    log "$name (REF_COMPILE=$c): reference $*"
    CLOCK=cpu REF_COMPILE=$c THREADS=1 REPS=3 WARMUP=${WARMUP_REF:-2} "$PY" "$REF_HARNESS" "$@" 2>/dev/null | tail -1 > "$OUT/${name}_compile$c.json"
  done
}
refab ref_train_bs2 train 2
refab ref_forward_bs2 forward 2
WARMUP_REF=0 refab ref_sample5_bs4 sample 4 5
# speed, CPU seconds at one thread
ab optim $B16 --batch-size 2 --mode train --warmup 1 --repeats 2 --memory off --compare optim=loop,foreach,fused
ab ema $B16 --batch-size 2 --mode train --warmup 1 --repeats 2 --memory off --compare ema=loop,foreach,lerp
ab attention_bs2 $B16 --batch-size 2 --mode train,forward --repeats 3 --compare attention=math-fp32,sdpa
ab cfg $B16 --batch-size 4 --mode sample --sample-steps 10 --compare cfg_mode=separate,batched
ab compile $B16 --batch-size 2 --mode train,forward --warmup 3 --repeats 3 --compare compile=0,1
ab bf16 $B16 --batch-size 2 --mode train,forward --repeats 3 --compare precision=fp32,bf16
ab channels_last $B16 --batch-size 2 --mode forward --repeats 5 --compare channels_last=0,1
"$PY" benchmarks/make_table.py
log "done"
