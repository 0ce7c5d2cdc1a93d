#!/usr/bin/env bash
# Every benchmark behind benchmarks/README.md, on this machine (CPU, 2 threads). The fp32 rows pin
# --precision fp32 (bench's default is auto, which picks bf16 for JiT-B/16 on a CPU with fast bf16 units);
# the "auto" rows measure the default.
#
#   benchmarks/run_all.sh            # all runs (~1 h on 2 quiet cores); results in benchmarks/results/*.json
#   ONLY="b16_bs2 ref_train_bs2" benchmarks/run_all.sh   # a subset (names below)
#   WAIT_QUIET=1 benchmarks/run_all.sh                   # before each run wait until the 1-min load < 0.5
#   REF_DIR=/tmp/jitref                                  # the reference side: a CPU-runnable checkout of
#                                                        # LTH14/JiT (not committed); skipped when absent
# Timings are only meaningful on a quiet machine: each JSON records the load average at start and end.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-/work/venv/bin/python}
T=${THREADS:-2}
OUT=benchmarks/results
REF_DIR=${REF_DIR:-/tmp/jitref}
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
sbs() { # name, side_by_side.py args... (jitkit and the reference interleaved in one process)
  local name=$1; shift
  want "$name" || return 0
  [[ -f "$REF_DIR/denoiser.py" ]] || { log "$name: skipped (no reference checkout at $REF_DIR)"; return 0; }
  quiet
  log "$name: side_by_side.py $*"
  "$PY" benchmarks/side_by_side.py --reference-dir "$REF_DIR" "$@" --threads "$T" --out "$OUT/$name.json" > /dev/null
}

B16="--model JiT-B/16 --img-size 256"
F32="--precision fp32"
# --- the targets: jitkit and the reference side by side, interleaved in one process ------------------------
# jitkit in float32 (eager, compiled) against the reference's float32, and in its default precision (auto)
J="eager,compile,eager:auto,compile:auto"
sbs sbs_train_bs2 --mode train --batch-size 2 --repeats 10 --jitkit "$J"
TORCHDYNAMO_DISABLE=1 sbs sbs_train_bs2_eager --mode train --batch-size 2 --repeats 8 --jitkit eager  # both eager
sbs sbs_forward_bs2 --mode forward --batch-size 2 --repeats 15 --jitkit "$J"
sbs sbs_sample_bs4_heun10 --mode sample --sample-steps 10 --batch-size 4 --repeats 3 --jitkit "$J"
sbs sbs_sample_bs4 --mode sample --batch-size 4 --repeats 2
sbs sbs_mem_bs8 --mode memory --batch-size 8
TORCHDYNAMO_DISABLE=1 sbs sbs_mem_bs8_eager --mode memory --batch-size 8 --jitkit eager  # both sides eager
# --- JiT-B/16 and the small shapes model (preset "shapes": JiT-T/4 at 16 px, 16 classes, batch 64, Heun 20) --
bench b16_bs2 $F32 $B16 --batch-size 2 --mode train,forward --repeats 5
bench b16_bs2_compile $F32 $B16 --batch-size 2 --mode train,forward --repeats 5 --warmup 5 --compile
bench b16_bs8 $F32 $B16 --batch-size 8 --mode train,forward --repeats 3
bench b16_bs8_compile $F32 $B16 --batch-size 8 --mode train,forward --repeats 5 --warmup 3 --compile
bench b16_sample_bs4 $F32 $B16 --batch-size 4 --mode sample --sample-steps 50 --cfg 2.9
bench shapes $F32 --model JiT-T/4 --img-size 16 --num-classes 16 --batch-size 64 --sample-steps 20 --cfg 3.0 \
  --repeats 10
# --- the default: precision auto (bf16 where the probe measures it faster for the model; fp32 elsewhere) -----
bench b16_bs2_auto $B16 --batch-size 2 --mode train,forward --repeats 5 --precision auto
bench b16_bs8_auto_compile_math $B16 --batch-size 8 --mode train,forward --repeats 10 --precision auto --compile \
  --attention math
bench b16_bs8_forward_auto_compile $B16 --batch-size 8 --mode forward --repeats 10 --precision auto --compile
bench b16_sample_bs4_heun10 $F32 $B16 --batch-size 4 --mode sample --sample-steps 10 --cfg 2.9
bench b16_sample_bs4_heun10_auto $B16 --batch-size 4 --mode sample --sample-steps 10 --cfg 2.9 --precision auto
# compiled sampling (jitkit sample --compile on, and auto on long jobs): the whole network frozen, one graph
bench b16_sample_bs4_heun10_auto_compile $B16 --batch-size 4 --mode sample --sample-steps 10 --cfg 2.9 \
  --precision auto --compile --sample-repeats 3
bench b16_sample_bs4_auto $B16 --batch-size 4 --mode sample --sample-steps 50 --cfg 2.9 --precision auto
bench shapes_auto --model JiT-T/4 --img-size 16 --num-classes 16 --batch-size 64 --sampler dpm++2m-pc \
  --sample-steps 10 --cfg 2.0 --repeats 10 --precision auto
# --- optimisations, before → after (ratios are over the first value) ----------------------------------------
bench cmp_cpu_linear $F32 $B16 --batch-size 2 --mode train,forward --compare cpu_linear=aten,onednn
bench cmp_cpu_linear_bs8 $F32 $B16 --batch-size 8 --mode train,forward --repeats 3 --compare cpu_linear=aten,onednn
bench cmp_cpu_linear_sample $F32 $B16 --batch-size 4 --mode sample --sample-steps 10 --compare cpu_linear=aten,onednn
bench cmp_cpu_linear_shapes $F32 --model JiT-T/4 --img-size 16 --num-classes 16 --batch-size 64 --sample-steps 20 \
  --cfg 3.0 --repeats 10 --compare cpu_linear=aten,onednn
bench cmp_attention_bs2 $F32 $B16 --batch-size 2 --mode train,forward --compare attention=math-fp32,sdpa
bench cmp_attention_bs8 $F32 $B16 --batch-size 8 --mode train --repeats 2 --compare attention=math-fp32,sdpa
bench cmp_optim $F32 $B16 --batch-size 2 --mode train --repeats 8 --compare optim=loop,foreach,fused,fused-ema
bench cmp_ema $F32 $B16 --batch-size 2 --mode train --compare ema=loop,foreach,lerp
bench cmp_cfg $F32 $B16 --batch-size 4 --mode sample --sample-steps 10 --compare cfg_mode=separate,batched
bench cmp_item $F32 $B16 --batch-size 2 --mode train --compare item_sync=1,0
bench cmp_gradckpt_bs8 $F32 $B16 --batch-size 8 --mode train --repeats 4 --compare grad_checkpoint=0,1
bench cmp_channels_last $F32 $B16 --batch-size 2 --mode forward --compare channels_last=0,1
bench cmp_compile $F32 $B16 --batch-size 2 --mode train,forward --warmup 3 --compare compile=0,1
bench cmp_bf16 $B16 --batch-size 2 --mode train,forward --compare precision=fp32,bf16
bench cmp_threads $F32 $B16 --batch-size 2 --mode forward --compare threads=1,2
if want rope; then quiet; log "rope micro"; "$PY" benchmarks/rope_micro.py --threads "$T" > "$OUT/rope.json"; fi
if want ema; then quiet; log "ema micro"; "$PY" benchmarks/ema_micro.py --threads "$T" > "$OUT/ema.json"; fi
if want planner; then log "planner"; "$PY" benchmarks/planner_table.py > "$OUT/planner.json"; fi
"$PY" benchmarks/make_table.py
log "done: tables in benchmarks/README.md"
