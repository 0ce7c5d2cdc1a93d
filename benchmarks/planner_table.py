"""The planner's predicted micro-batch and peak memory for JiT-B/16, L/16 and H/16 at 256 px on one 12, 24 and
80 GB GPU (bf16 autocast, AdamW + two EMAs in fp32), with and without activation checkpointing.

    python benchmarks/planner_table.py > benchmarks/results/planner.json

Also prints (in the JSON) the planner's CPU fp32 estimate for the measured B/16 batch-8 training step, so the
estimate can be set beside `jitkit bench`'s measured peak.
"""

from __future__ import annotations

import json

from jitkit.config import model_config
from jitkit.train.planner import GiB, estimate_memory, make_plan

GPUS = {"12GB": 12, "24GB": 24, "80GB": 80}


def main() -> None:
    rows = []
    for name in ("JiT-B/16", "JiT-L/16", "JiT-H/16"):
        cfg = model_config(name, img_size=256)
        for label, gb in GPUS.items():
            for gc in (False, True):
                plan = make_plan(
                    cfg,
                    target_batch=1024,
                    device_kind="cuda",
                    devices=1,
                    device_mem=int(gb * 1e9),
                    host_mem=64 * GiB,
                    cpus=8,
                    precision="bf16",
                    grad_checkpoint=gc,
                )
                rows.append(
                    {
                        "model": name,
                        "gpu": label,
                        "grad_checkpoint": gc,
                        "micro_batch": plan.micro_batch,
                        "fits": plan.fits,
                        "peak_gib": plan.memory.total / GiB,
                        "state_gib": plan.memory.state / GiB,
                        "activations_gib": plan.memory.activations / GiB,
                    }
                )
    cpu = estimate_memory(
        model_config("JiT-B/16"), 8, precision="fp32", grad_checkpoint=False, device_kind="cpu"
    )
    cpu_gc = estimate_memory(
        model_config("JiT-B/16"), 8, precision="fp32", grad_checkpoint=True, device_kind="cpu"
    )
    print(
        json.dumps(
            {
                "rows": rows,
                "cpu_b16_bs8_fp32_estimate_mib": cpu.total / 2**20,
                "cpu_b16_bs8_fp32_gc_estimate_mib": cpu_gc.total / 2**20,
                "assumptions": "bf16 autocast, AdamW + 2 EMAs fp32, 90% of the GPU usable, CUDA context 0.5 GiB, "
                "micro-batch = largest power of two dividing 1024 that fits",
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
