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


def measured(st: dict) -> str:
    """ "CPU, YYYY-MM-DD HH:MM UTC" of a result's settings."""
    return f"{st.get('cpu', '?')}, {st.get('measured_at_utc', '')[:16].replace('T', ' ')} UTC"


def side_by_side_table() -> list[str]:
    """The targets from benchmarks/side_by_side.py: jitkit and the reference interleaved in one process, one
    row per jitkit variant (eager or compiled; float32, or ``auto``: the precision jitkit picks by default)."""
    runs = [
        ("training, batch 2", load("sbs_train_bs2"), {"fp32": "≥ 1.3×"}, ".3f"),
        ("training, batch 2, both eager (`TORCHDYNAMO_DISABLE=1`)", load("sbs_train_bs2_eager"), {}, ".3f"),
        ("forward, batch 2", load("sbs_forward_bs2"), {}, ".3f"),
        (
            "sampling, Heun 10, CFG 2.9 on [0.1, 1], batch 4",
            load("sbs_sample_bs4_heun10"),
            {"fp32": "≥ 1.3×", "auto": "≥ 5×"},
            ".4f",
        ),
        (
            "sampling, Heun 50, CFG 2.9 on [0.1, 1], batch 4",
            load("sbs_sample_bs4"),
            {"fp32": "≥ 1.2×"},
            ".4f",
        ),
    ]
    runs = [r for r in runs if r[1]]
    if not runs:
        return []
    rows = [
        "| JiT-B/16 @ 256 px, 2 threads | reference (fp32) img/s (MFU) | jitkit variant | jitkit img/s (MFU) "
        "| jitkit ÷ reference | target | rounds | load (1 min) | CPU, measured |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for label, d, targets, spec in runs:
        ref = next(n for n in d["variants"] if n.startswith("reference"))
        rv = d["variants"][ref]
        rm = f" ({rv['mfu']:.1%})" if rv.get("mfu") is not None else ""
        st = d["settings"]
        when = measured(st)
        for name, v in d["variants"].items():
            if name == ref:
                continue
            precision = v.get("precision", "fp32")
            kind = "auto" if ", auto" in name else "fp32"
            variant = name.removeprefix("jitkit ").strip("()")
            if kind == "auto":
                variant = variant.replace("auto", f"auto → {precision}")
            m = f" ({v['mfu']:.1%})" if v.get("mfu") is not None else ""
            rat = (d["ratios"].get(name) or {}).get(ref)
            rows.append(
                f"| {label} | {f(rv['img_per_s'], spec)}{rm} ({'compiled' if 'compiled' in ref else 'eager'}) "
                f"| {variant} | {f(v['img_per_s'], spec)}{m} | {f(rat, '.2f', '×')} | {targets.get(kind, '')} "
                f"| {st['repeats']} | {load_str(d)} | {when} |"
            )
    for name, label in (
        ("sbs_mem_bs8", "peak training-step memory, batch 8 (RSS growth, a fresh process each)"),
        ("sbs_mem_bs8_eager", "peak training-step memory, batch 8, both eager (`TORCHDYNAMO_DISABLE=1`)"),
    ):
        d = load(name)
        if not d:
            continue
        v = d["variants"]
        ref = v["reference"]["peak_mem_mib"]
        je, jc = v.get("jitkit (eager)"), v.get("jitkit (compiled)")
        cells = [f"{ref:.0f} MiB"] + [
            ("–" if j is None else f"{j['peak_mem_mib']:.0f} MiB") for j in (je, jc)
        ]
        cells[0] += " (eager)" if name.endswith("_eager") else " (compiled)"
        rat = [(d["ratios"].get(j) or {}).get("reference") for j in ("jitkit (eager)", "jitkit (compiled)")]
        st = d["settings"]
        when = measured(st)
        for variant, cell, r, j in (("eager", cells[1], rat[0], je), ("compiled", cells[2], rat[1], jc)):
            if j is None:  # a variant that was not measured (both-eager: jitkit eager only)
                continue
            rows.append(
                f"| {label} | {cells[0]} | {variant} | {cell} | {f(r, '.2f', '×')} | ≤ 1× | – | {load_str(d)} "
                f"| {when} |"
            )
    rows += [
        "",
        "Ratios are medians of the per-round ratios (each round times one step of every variant back to back); "
        "MFU divides each timed step by the GEMM probe of its precision (2048² products, float32 or bf16) run "
        "just before it, median over the rounds; the reference runs float32 (its mixed precision is CUDA-only); "
        "`auto` is the precision jitkit picks by default (measured per model: bf16 for JiT-B/16 on this CPU). Memory: `--mode memory`, the RSS growth of two "
        'training steps over "model and batch built", each side in a fresh process.',
    ]
    return rows


def issue_table() -> list[str]:
    rows = [
        "| model | batch | train img/s | forward img/s | sampling img/s | peak train memory (MiB) | MFU train | MFU forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    js = load("b16_sample_bs4")
    for name, b, how in (
        ("b16_bs2", 2, ""),
        ("b16_bs2_compile", 2, ", `--compile`"),
        ("b16_bs8", 8, ""),
        ("b16_bs8_compile", 8, ", `--compile`"),
    ):
        d = load(name)
        if not d:
            continue
        sample = f(js and js["sample_img_per_s"], ".4f") + " (batch 4)" if name == "b16_bs2" else "–"
        rows.append(
            f"| JiT-B/16 @ 256{how} | {b} | {f(d['train_img_per_s'], '.3f')} | {f(d['forward_img_per_s'], '.3f')} | "
            f"{sample} | {f(d['peak_mem_mib'], '.0f')} | {f(d['mfu_train'], '.1%')} | {f(d['mfu_forward'], '.1%')} |"
        )
    d = load("shapes")
    if d:
        rows.append(
            f"| {d['settings']['model']} @ {d['settings']['img_size']} (shapes preset) | {d['settings']['batch_size']} "
            f"| {f(d['train_img_per_s'], '.1f')} | {f(d['forward_img_per_s'], '.1f')} | "
            f"{f(d['sample_img_per_s'], '.1f')} (Heun {d['settings']['sample_steps']}) | {f(d['peak_mem_mib'], '.0f')} | {f(d['mfu_train'], '.1%')} | {f(d['mfu_forward'], '.1%')} |"
        )
    return rows


def auto_table() -> list[str]:
    """The default (``--precision auto``) beside the fp32 rows of the same settings."""
    rows = [
        "| setting | precision auto → ran (probe speedup) | img/s auto | img/s fp32 | auto / fp32 | MFU (bf16 peak where bf16) |",
        "|---|---|---|---|---|---|",
    ]
    pairs = (
        ("JiT-B/16, batch 2, training", "b16_bs2_auto", "b16_bs2", "train_img_per_s", "mfu_train"),
        ("JiT-B/16, batch 2, forward", "b16_bs2_auto", "b16_bs2", "forward_img_per_s", "mfu_forward"),
        (
            "JiT-B/16, batch 8, training, `--compile --attention math`",
            "b16_bs8_auto_compile_math",
            "b16_bs8_compile",
            "train_img_per_s",
            "mfu_train",
        ),
        (
            "JiT-B/16, batch 8, forward, `--compile`",
            "b16_bs8_forward_auto_compile",
            "b16_bs8_compile",
            "forward_img_per_s",
            "mfu_forward",
        ),
        (
            "JiT-B/16, Heun 10, CFG 2.9, batch 4, sampling",
            "b16_sample_bs4_heun10_auto",
            "b16_sample_bs4_heun10",
            "sample_img_per_s",
            None,
        ),
        (
            "JiT-B/16, Heun 50, CFG 2.9, batch 4, sampling",
            "b16_sample_bs4_auto",
            "b16_sample_bs4",
            "sample_img_per_s",
            None,
        ),
        (
            "shapes preset JiT-T/4, batch 64, training",
            "shapes_auto",
            "shapes",
            "train_img_per_s",
            "mfu_train",
        ),
    )
    for what, auto, fp32, key, mfu in pairs:
        a, b = load(auto), load(fp32)
        if not a:
            continue
        st = a["settings"]
        choice = st.get("precision_choice") or {}
        sp = choice.get("speedup")
        ran = f"{st.get('precision_resolved', '?')}" + (f" ({sp:.2f}×)" if sp is not None else "")
        va, vb = a.get(key), b.get(key) if b else None
        rows.append(
            f"| {what} | {ran} | {f(va, '.3f')} | {f(vb, '.3f')} | {ratio(va, vb)} | "
            f"{f(a.get(mfu), '.1%') if mfu else '–'} |"
        )
    return rows


CMPS = [
    (
        "cmp_cpu_linear",
        "float32 CPU linears: torch's F.linear (MKL) → oneDNN (`jitkit.models.linear`), batch 2",
    ),
    ("cmp_cpu_linear_bs8", "float32 CPU linears: MKL → oneDNN, batch 8"),
    ("cmp_cpu_linear_sample", "float32 CPU linears: MKL → oneDNN, sampling (Heun 10, batch 4)"),
    ("cmp_cpu_linear_shapes", "float32 CPU linears: MKL → oneDNN, the shapes preset's JiT-T/4 (batch 64)"),
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
        "### JiT-B/16 and the shapes model (`jitkit bench`)",
        "",
        *issue_table(),
        "",
        "### The default, `--precision auto`, beside float32",
        "",
        *auto_table(),
        "",
        "### Optimisations, before → after (`jitkit bench --compare`)",
        "",
        *compare_tables(),
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
