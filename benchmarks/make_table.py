"""Render benchmarks/results/*.json into the tables of benchmarks/README.md (between the results markers).

python benchmarks/make_table.py
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
RES = HERE / "results"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _read(p: Path) -> dict | None:
    """A result file, or None when it is absent, empty or unfinished (a run still writing it)."""
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def load(name: str) -> dict | None:
    return _read(RES / f"{name}.json")


def load_ab(name: str) -> dict | None:
    return _read(RES / "ab" / f"{name}.json")


def f(v, spec: str = ".2f", suffix: str = "") -> str:
    return "–" if v is None else f"{format(v, spec)}{suffix}"


def load_str(d: dict | None) -> str:
    if not d:
        return "–"
    st = d.get("settings", d)
    a, b = st.get("loadavg_start"), st.get("loadavg_end")
    if not a:
        return "–"
    return f"{float(a[0]):.2f}→{float(b[0]):.2f}" if b else f"{float(a[0]):.2f}"


def ratio(a, b) -> str:
    return "–" if a is None or b in (None, 0) else f"{a / b:.2f}×"


def targets() -> list[str]:
    j2, j8, js = load("b16_bs2"), load("b16_bs8"), load("b16_sample_bs4")
    j2c, jsc = load("b16_bs2_compile"), load("b16_sample_bs4_compile")
    rt, rte, rf, rfe = (
        load("ref_train_bs2"),
        load("ref_train_bs2_eager"),
        load("ref_forward_bs2"),
        load("ref_forward_bs2_eager"),
    )
    rs, rse, rm = load("ref_sample_bs4"), load("ref_sample_bs4_eager"), load("ref_mem_bs8")
    rows = [
        "| JiT-B/16 @ 256 px, fp32, 2 threads | jitkit (eager) | jitkit (`--compile`) | reference (compiled) "
        "| reference (eager) | best jitkit ÷ best reference | target |",
        "|---|---|---|---|---|---|---|",
    ]

    def g(d, k):
        return None if d is None else d.get(k)

    def best(*vals):
        v = [x for x in vals if x is not None]
        return max(v) if v else None

    jt, jf = g(j2, "train_img_per_s"), g(j2, "forward_img_per_s")
    jtc, jfc = g(j2c, "train_img_per_s"), g(j2c, "forward_img_per_s")
    rows.append(
        f"| training img/s, batch 2 | {f(jt, '.3f')} | {f(jtc, '.3f')} | {f(g(rt, 'img_per_s_median'), '.3f')} "
        f"| {f(g(rte, 'img_per_s_median'), '.3f')} "
        f"| {ratio(best(jt, jtc), best(g(rt, 'img_per_s_median'), g(rte, 'img_per_s_median')))} | ≥ 1.3× |"
    )
    rows.append(
        f"| forward img/s, batch 2 | {f(jf, '.3f')} | {f(jfc, '.3f')} | {f(g(rf, 'img_per_s_median'), '.3f')} "
        f"| {f(g(rfe, 'img_per_s_median'), '.3f')} "
        f"| {ratio(best(jf, jfc), best(g(rf, 'img_per_s_median'), g(rfe, 'img_per_s_median')))} | |"
    )
    peak, fl = g(j2, "gemm_peak_flops"), g(j2, "flops_per_img")

    def mfu(d):
        v = g(d, "img_per_s_median")
        return None if v is None or not peak else v * fl / peak

    def best_peak_mfu(d):  # the same definition as the reference's columns (one peak, best call)
        return (
            g(d, "mfu_forward_vs_best_peak")
            if g(d, "mfu_forward_vs_best_peak") is not None
            else g(d, "mfu_forward")
        )

    rows.append(
        f"| forward MFU, batch 2 (of the best call of a 2-s fp32 GEMM peak run: {f(peak and peak / 1e9, '.0f')} GFLOP/s) "
        f"| {f(best_peak_mfu(j2), '.1%')} "
        f"| {f(best_peak_mfu(j2c), '.1%')} (own peak {f(g(j2c, 'gemm_peak_flops') and g(j2c, 'gemm_peak_flops') / 1e9, '.0f')}) | {f(mfu(rf), '.1%')} | {f(mfu(rfe), '.1%')} | | ≥ 80% |"
    )
    js_v, jsc_v = g(js, "sample_img_per_s"), g(jsc, "sample_img_per_s")
    rows.append(
        f"| sampling img/s, Heun 50, CFG 2.9 on [0.1, 1], batch 4 | {f(js_v, '.4f')} | {f(jsc_v, '.4f')} "
        f"| {f(g(rs, 'img_per_s_median'), '.4f')} | {f(g(rse, 'img_per_s_median'), '.4f')} "
        f"| {ratio(best(js_v, jsc_v), best(g(rs, 'img_per_s_median'), g(rse, 'img_per_s_median')))} | ≥ 1.2× |"
    )
    jm, refm = g(j8, "peak_mem_mib"), g(rm, "peak_rss_growth_mib")
    ab_j, ab_r1, ab_r0 = (
        load_ab("mem_b16_bs8"),
        load_ab("ref_mem_bs8_compile1"),
        load_ab("ref_mem_bs8_compile0"),
    )
    jm = jm if jm is not None else g(ab_j, "peak_mem_mib")
    refm = refm if refm is not None else g(ab_r1, "peak_rss_growth_mib")
    refm0 = g(ab_r0, "peak_rss_growth_mib")
    best_ref = min([v for v in (refm, refm0) if v is not None], default=None)
    rows.append(
        f"| peak training-step memory, batch 8 (MiB, RSS growth) | {f(jm, '.0f')} | – | {f(refm, '.0f')} | {f(refm0, '.0f')} "
        f"| {ratio(jm, best_ref)} | ≤ 1× |"
    )
    loads = ", ".join(
        f"{n} {load_str(d)}"
        for n, d in [
            ("jitkit b2", j2),
            ("b2 compiled", j2c),
            ("b8", j8),
            ("sample", js),
            ("ref train", rt),
            ("ref fwd", rf),
            ("ref sample", rs),
        ]
        if d
    )
    rows.append("")
    rows.append(f"1-minute load average at start→end of each run: {loads or '–'}.")
    return rows


def side_by_side_table() -> list[str]:
    """The targets from benchmarks/side_by_side.py: jitkit and the reference interleaved in one process."""
    runs = [
        ("training, batch 2", load("sbs_train_bs2"), "≥ 1.3×", ".3f"),
        ("training, batch 2, both eager (`TORCHDYNAMO_DISABLE=1`)", load("sbs_train_bs2_eager"), "", ".3f"),
        ("forward, batch 2", load("sbs_forward_bs2"), "MFU ≥ 80%", ".3f"),
        ("sampling, Heun 50, CFG 2.9 on [0.1, 1], batch 4", load("sbs_sample_bs4"), "≥ 1.2×", ".4f"),
    ]
    runs = [r for r in runs if r[1]]
    if not runs:
        return []
    rows = [
        "| JiT-B/16 @ 256 px, fp32, 2 threads | reference img/s (MFU) | jitkit eager img/s (MFU) "
        "| jitkit compiled img/s (MFU) | jitkit eager ÷ reference | jitkit compiled ÷ reference | target "
        "| rounds | load (1 min) | measured |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, d, target, spec in runs:
        ref = next(n for n in d["variants"] if n.startswith("reference"))
        cells = []
        for c in (ref, "jitkit (eager)", "jitkit (compiled)"):
            v = d["variants"].get(c)
            if v is None:
                cells.append("–")
                continue
            m = f" ({v['mfu']:.1%})" if v.get("mfu") is not None else ""
            cells.append(f"{f(v['img_per_s'], spec)}{m}")
        cells[0] += " (compiled)" if "compiled" in ref else " (eager)"
        rat = [(d["ratios"].get(j) or {}).get(ref) for j in ("jitkit (eager)", "jitkit (compiled)")]
        st = d["settings"]
        when = st.get("measured_at_utc", "")[11:16]
        rows.append(
            f"| {label} | {' | '.join(cells)} | {f(rat[0], '.2f', '×')} | {f(rat[1], '.2f', '×')} | {target} "
            f"| {st['repeats']} | {load_str(d)} | {when} UTC |"
        )
    rows += [
        "",
        "Ratios are medians of the per-round ratios (each round times one step of every variant back to back); "
        "MFU divides each timed step by the fp32 GEMM probe (2048² matmuls) run just before it, median over "
        "the rounds.",
    ]
    return rows


def targets_cpu() -> list[str]:
    """jitkit vs the reference in CPU seconds at one thread (run_ab_cpu.sh): indicative while the machine is busy."""
    j, js = load_ab("b16_bs2"), load_ab("b16_sample5_bs4")
    if not j and not js:
        return []

    def r(name, c):
        return load_ab(f"{name}_compile{c}")

    def g(d, k):
        return None if d is None else d.get(k)

    def inv(v):
        return None if not v else 1.0 / v

    rows = [
        "| JiT-B/16 @ 256, fp32, 1 thread, CPU seconds per image | jitkit | reference (compiled) | reference (eager) "
        "| reference ÷ jitkit (best reference) |",
        "|---|---|---|---|---|",
    ]
    for label, jv, name in (
        ("training step, batch 2", g(j, "train_img_per_s"), "ref_train_bs2"),
        ("forward, batch 2", g(j, "forward_img_per_s"), "ref_forward_bs2"),
        ("sampling Heun 5, CFG 2.9 on [0.1, 1], batch 4", g(js, "sample_img_per_s"), "ref_sample5_bs4"),
    ):
        rc, re = g(r(name, 1), "img_per_s_median"), g(r(name, 0), "img_per_s_median")
        best = max([v for v in (rc, re) if v is not None], default=None)
        rows.append(
            f"| {label} | {f(inv(jv), '.3f')} | {f(inv(rc), '.3f')} | {f(inv(re), '.3f')} | {ratio(jv, best)} |"
        )
    rows.append("")
    rows.append(
        f"Load (1-minute) during the jitkit runs: {load_str(j)}, {load_str(js)}. CPU time at one thread is robust to "
        "other processes sharing the cores (up to cache effects) but is not the 2-thread wall-clock target."
    )
    return rows


def issue_table() -> list[str]:
    rows = [
        "| model | batch | train img/s | forward img/s | sampling img/s | peak train memory (MiB) | MFU train | MFU forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    js = load("b16_sample_bs4")
    for name, b in (("b16_bs2", 2), ("b16_bs8", 8)):
        d = load(name)
        if not d:
            continue
        rows.append(
            f"| JiT-B/16 @ 256 | {b} | {f(d['train_img_per_s'], '.3f')} | {f(d['forward_img_per_s'], '.3f')} | "
            f"{f(js and js['sample_img_per_s'], '.4f') + ' (batch 4)' if b == 2 else '–'} | {f(d['peak_mem_mib'], '.0f')} | "
            f"{f(d['mfu_train'], '.1%')} | {f(d['mfu_forward'], '.1%')} |"
        )
    d = load("shapes")
    if d:
        rows.append(
            f"| {d['settings']['model']} @ {d['settings']['img_size']} (shapes preset) | {d['settings']['batch_size']} "
            f"| {f(d['train_img_per_s'], '.1f')} | {f(d['forward_img_per_s'], '.1f')} | "
            f"{f(d['sample_img_per_s'], '.1f')} (Heun {d['settings']['sample_steps']}) | {f(d['peak_mem_mib'], '.0f')} | {f(d['mfu_train'], '.1%')} | {f(d['mfu_forward'], '.1%')} |"
        )
    return rows


CMPS = [
    ("cmp_attention_bs2", "attention: reference math-fp32 → SDPA (batch 2)"),
    ("cmp_attention_bs8", "attention: math-fp32 → SDPA, training memory (batch 8)"),
    (
        "cmp_optim",
        "AdamW: per-tensor loop (torch's CPU default, the reference) → foreach → fused (each + the EMA update) "
        "→ fused-ema (AdamW and both EMAs in one compiled pass)",
    ),
    (
        "cmp_ema",
        "EMA: per-tensor mul/add loop (reference) → jitkit.train.ema.EMA (a foreach lerp per decay) → bare foreach lerp",
    ),
    (
        "cmp_cfg",
        "sampling CFG: two separate passes → one batched pass + skipped unconditional (Heun 10, batch 4)",
    ),
    ("cmp_item", "loss.item() every step → none"),
    ("cmp_gradckpt_bs8", "activation checkpointing off → on (batch 8)"),
    ("cmp_channels_last", "channels-last images/conv weights off → on"),
    ("cmp_compile", "torch.compile of the blocks off → on"),
    ("cmp_bf16", "fp32 → bf16 autocast (CPU; MFU against each dtype's own GEMM peak)"),
    ("cmp_threads", "threads 1 → 2"),
]


def compare_tables() -> list[str]:
    rows = [
        "| comparison | variant | train img/s | forward img/s | sampling img/s | peak MiB | MFU | ratio (train / fwd / sample / mem) | load |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, title in CMPS:
        d = load(name)
        if not d:
            continue
        for val, r in zip(d["values"], d["variants"]):
            rat = d["ratios"][val]
            rs = " / ".join(
                f(rat[k], ".2f")
                for k in ("train_img_per_s", "forward_img_per_s", "sample_img_per_s", "peak_mem_mib")
            )
            rows.append(
                f"| {title} | {d['compare']}={val} | {f(r['train_img_per_s'], '.3f')} | {f(r['forward_img_per_s'], '.3f')} | "
                f"{f(r['sample_img_per_s'], '.4f')} | {f(r['peak_mem_mib'], '.0f')} | {f(r['mfu'], '.1%')} | {rs} | {load_str(r)} |"
            )
            title = ""
    d = load("rope")
    if d:
        rows.append("")
        rows.append(
            f"RoPE at B/16 shapes {d['shape']} ({d['threads']} threads): forward {d['forward_ms_before']:.2f} → "
            f"{d['forward_ms_after']:.2f} ms, forward+backward {d['fwd_bwd_ms_before']:.2f} → {d['fwd_bwd_ms_after']:.2f} ms "
            f"(max difference {d['max_abs_diff']:.1e}); residual gate x + g·a → addcmul: {d['gate_ms_before']:.2f} → "
            f"{d['gate_ms_after']:.2f} ms."
        )
    d = load("ema")
    if d:
        rows.append("")
        rows.append(
            f"Both EMA updates of a training step ({d['model']}, {d['params'] / 1e6:.0f} M parameters in "
            f"{d['tensors']} tensors, {d['threads']} threads, `benchmarks/ema_micro.py`, best of the repeats): "
            f"foreach mul + add {d['foreach_mul_add']['best_ms']:.0f} ms → one foreach lerp per decay "
            f"{d['foreach_lerp']['best_ms']:.0f} ms (per-tensor lerp loop {d['loop_lerp']['best_ms']:.0f} ms; two "
            f"lerps over one flat buffer, a bound, {d['flat_lerp']['best_ms']:.0f} ms)."
        )
    return rows


AB = [
    ("attention_bs8", "attention math-fp32 → SDPA, training memory (batch 8)"),
    ("gradckpt_bs8", "activation checkpointing off → on (batch 8)"),
    ("optim", "AdamW: per-tensor loop (torch's CPU default, the reference) → foreach → fused"),
    ("ema", "EMA: per-tensor loop (reference) → jitkit.train.ema (foreach mul/add) → foreach lerp"),
    ("attention_bs2", "attention math-fp32 → SDPA (batch 2)"),
    ("cfg", "sampling CFG: separate passes → batched + skipped unconditional (Heun 10, batch 4)"),
    ("compile", "torch.compile of the blocks off → on"),
    ("bf16", "fp32 → bf16 autocast (CPU)"),
    ("channels_last", "channels-last off → on"),
]


def ab_tables() -> list[str]:
    rows = [
        "| comparison | variant | train CPU-s/img | forward CPU-s/img | sampling CPU-s/img | peak MiB "
        "| speed-up (train / fwd / sample), memory ratio | load |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def inv(v):
        return None if not v else 1.0 / v

    n = 0
    for name, title in AB:
        d = load_ab(name)
        if not d:
            continue
        for val, r in zip(d["values"], d["variants"]):
            rat = d["ratios"][val]
            rs = " / ".join(
                f(rat[k], ".2f") for k in ("train_img_per_s", "forward_img_per_s", "sample_img_per_s")
            )
            rows.append(
                f"| {title} | {d['compare']}={val} | {f(inv(r['train_img_per_s']), '.3f')} | "
                f"{f(inv(r['forward_img_per_s']), '.3f')} | {f(inv(r['sample_img_per_s']), '.2f')} | "
                f"{f(r['peak_mem_mib'], '.0f')} | {rs}, {f(rat['peak_mem_mib'], '.2f')} | {load_str(r)} |"
            )
            title = ""
            n += 1
    return rows if n else []


def planner_table() -> list[str]:
    d = load("planner")
    if not d:
        return []
    rows = [
        "| model @ 256 | GPU | micro-batch without checkpointing (peak GiB) | micro-batch with checkpointing (peak GiB) |",
        "|---|---|---|---|",
    ]
    by = {}
    for r in d["rows"]:
        by.setdefault((r["model"], r["gpu"]), {})[r["grad_checkpoint"]] = r

    def cell(r):
        return (
            f"{r['micro_batch']} ({r['peak_gib']:.1f})"
            if r["fits"]
            else f"does not fit ({r['peak_gib']:.1f} at 1)"
        )

    for (m, gpu), v in by.items():
        rows.append(f"| {m} | {gpu} | {cell(v[False])} | {cell(v[True])} |")
    rows.append("")
    rows.append(
        f"Assumptions: {d['assumptions']}. For scale: the planner's CPU fp32 estimate of the B/16 batch-8 step is "
        f"{d['cpu_b16_bs8_fp32_estimate_mib']:.0f} MiB ({d['cpu_b16_bs8_fp32_gc_estimate_mib']:.0f} MiB with checkpointing), "
        "which includes the weights (0.5 GiB) that `jitkit bench` has in its baseline."
    )
    return rows


def machine() -> list[str]:
    d = load("b16_bs2") or load("shapes")
    if not d:
        return []
    st = d["settings"]
    return [f"Machine: {st['cpu']}, {st['threads']} threads, torch {st['torch']}, Python {st['python']}."]


def main() -> None:
    sbs = side_by_side_table()
    body = [
        "",
        *machine(),
        "",
        *(
            ["### Targets, side by side in one process (`benchmarks/side_by_side.py`)", "", *sbs, ""]
            if sbs
            else []
        ),
        "### Targets, separate processes (`benchmarks/run_all.sh`)",
        "",
        *targets(),
        "",
        *(
            ["### Targets, indicative: one thread, CPU seconds", "", *targets_cpu(), ""]
            if targets_cpu()
            else []
        ),
        "### JiT-B/16 and the shapes model",
        "",
        *issue_table(),
        "",
        "### Optimisations, before → after",
        "",
        *compare_tables(),
        "",
        "### Optimisations, before → after in CPU seconds at one thread (load-robust)",
        "",
        "From `benchmarks/run_ab_cpu.sh`: process CPU seconds per image with `--threads 1 --clock cpu`, variants "
        "interleaved in one process — comparable between variants while other work shares the machine, but not "
        "throughputs. Memory is the peak RSS growth of a training step, in a fresh process per variant.",
        "",
        *ab_tables(),
        "",
        "### Planner: micro-batch that fits (bf16)",
        "",
        *planner_table(),
        "",
    ]
    readme = HERE / "README.md"
    text = readme.read_text() if readme.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text:
        text += f"\n{BEGIN}\n{END}\n"
    pre, rest = text.split(BEGIN, 1)
    post = rest.split(END, 1)[1] if END in rest else ""
    new = pre + BEGIN + "\n" + "\n".join(body) + "\n" + END + post
    fd, tmp = tempfile.mkstemp(dir=HERE, suffix=".md")
    with os.fdopen(fd, "w") as fh:
        fh.write(new)
    os.replace(tmp, readme)


if __name__ == "__main__":
    main()
