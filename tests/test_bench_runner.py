"""jitkit.bench.runner and ``jitkit bench``: settings, the measured pieces and the quick benchmark's JSON."""

from __future__ import annotations

import json

import pytest
import torch

from jitkit.bench.measure import prepare_sample, prepare_train
from jitkit.bench.settings import BenchSettings
from jitkit.cli import build_parser, main
from jitkit.cli.bench import _settings, parse_compare
from jitkit.config import ConfigError
from jitkit.models.linear import onednn_available

REQUIRED = (
    "train_img_per_s",
    "forward_img_per_s",
    "sample_img_per_s",
    "peak_mem_mib",
    "flops_per_img",
    "mfu",
)
SETTINGS = (
    "model",
    "img_size",
    "batch_size",
    "device",
    "precision",
    "precision_resolved",
    "threads",
    "torch",
    "cpu",
    "device_name",
)
# a registered model small enough to build and step in well under a second
SMALL = BenchSettings(model="JiT-T/2", img_size=8, num_classes=3, device="cpu", warmup=1, sample_steps=2)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_quick_bench_json_has_every_field(capsys):
    assert main(["bench", "--quick", "--json", "--threads", "1"]) == 0
    res = _last_json(capsys)
    for k in REQUIRED:
        assert isinstance(res[k], float) and res[k] > 0, k
    for k in SETTINGS:
        assert res["settings"][k] not in (None, ""), k
    assert res["settings"]["threads"] == 1
    assert res["settings"]["model"] == "JiT-T/2"
    assert res["settings"]["precision"] == res["settings"]["precision_resolved"] == "fp32"
    assert res["settings"]["compiled_as"] is None  # eager
    assert 0 < res["mfu"] < 1.5
    # MFU pairs each timed step with the GEMM probe run just before it: recompute it from the raw timings
    tr = res["details"]["train"]
    per_step = [
        res["settings"]["batch_size"] * res["train_flops_per_img"] / t / p
        for t, p in zip(tr["seconds"], tr["gemm_probe_flops"])
    ]
    assert len(tr["gemm_probe_flops"]) == len(tr["seconds"])
    assert res["mfu"] == pytest.approx(sorted(per_step)[len(per_step) // 2], rel=1e-3)  # seconds are rounded
    # and the variant against the best call of the up-front peak measurement
    assert res["mfu_train_vs_best_peak"] == pytest.approx(
        res["train_img_per_s"] * res["train_flops_per_img"] / res["gemm_peak_flops"]
    )
    assert len(res["details"]["train"]["seconds"]) == 3  # the quick preset's repeats, warm-up excluded
    # the timed step is the library's AdamW and EMA
    assert tr["optimizer"]["class"] == "AdamW" and tr["ema"] == "jitkit.train.ema.EMA"
    # which float32 CPU GEMM the layers and the peak ran on, and how memory was handled, are recorded
    assert res["settings"]["cpu_linear_backend"] in ("onednn", "aten")
    assert res["details"]["gemm"]["backend"] in ("onednn", "torch.mm")
    assert res["settings"]["malloc"].startswith("retain") or res["settings"]["malloc"] == "default"


def test_precision_auto_is_recorded_as_asked_and_as_run(capsys):
    args = ["bench", "--quick", "--json", "--mode", "forward", "--device", "cpu", "--precision", "auto"]
    assert main([*args, "--repeats", "1", "--warmup", "0"]) == 0
    st = _last_json(capsys)["settings"]
    assert st["precision"] == "auto"
    assert st["precision_resolved"] == "fp32"  # auto is bf16 on CUDA only


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN kernels")
def test_pinned_cpu_linear_backend_is_what_the_layers_ran_on(capsys):
    rc = main(["bench", "--quick", "--json", "--mode", "forward", "--compare", "cpu_linear=aten,onednn"])
    assert rc == 0
    res = _last_json(capsys)
    assert [v["settings"]["cpu_linear_backend"] for v in res["variants"]] == ["aten", "onednn"]
    assert all(v["forward_img_per_s"] > 0 for v in res["variants"])


def test_quick_compare_reports_ratios(capsys):
    rc = main(["bench", "--quick", "--json", "--mode", "forward", "--compare", "attention=sdpa,math-fp32"])
    assert rc == 0
    res = _last_json(capsys)
    assert res["compare"] == "attention" and res["values"] == ["sdpa", "math-fp32"]
    assert [v["settings"]["attention"] for v in res["variants"]] == ["sdpa", "math-fp32"]
    assert res["ratios"]["sdpa"]["forward_img_per_s"] == 1.0
    r = res["variants"][1]["forward_img_per_s"] / res["variants"][0]["forward_img_per_s"]
    assert res["ratios"]["math-fp32"]["forward_img_per_s"] == pytest.approx(r)
    assert res["variants"][0]["train_img_per_s"] is None  # mode forward only


def test_with_value_coerces_through_the_config_base():
    s = BenchSettings(threads=2)
    assert s.with_value("threads", "none").threads is None
    assert s.with_value("compile", "1").compile is True
    assert s.with_value("grad_checkpoint", "off").grad_checkpoint is False
    assert s.with_value("batch_size", "8").batch_size == 8
    assert s.with_value("cfg", "3.5").cfg == 3.5
    assert s.with_value("precision", "bf16").precision == "bf16"
    assert s.threads == 2  # a copy: the settings are frozen
    with pytest.raises(ConfigError, match="batch_size: expected an integer, found 'many'"):
        s.with_value("batch_size", "many")
    with pytest.raises(ConfigError, match="compile: expected a boolean"):
        s.with_value("compile", "maybe")
    with pytest.raises(ConfigError, match="unknown BenchSettings key 'colour'"):
        s.with_value("colour", "red")
    with pytest.raises(ConfigError, match="repeats must be >= 1, found 0"):
        s.with_value("repeats", "0")
    with pytest.raises(ConfigError, match="precision must be one of .*found 'fp8'"):
        s.with_value("precision", "fp8")


def test_compare_and_flag_parsing(capsys):
    assert parse_compare("grad-checkpoint=0,1") == ("grad_checkpoint", ["0", "1"])
    assert parse_compare("dtype=fp32,bf16") == ("precision", ["fp32", "bf16"])  # the former name
    with pytest.raises(ValueError, match="KEY=a,b"):
        parse_compare("attention")
    with pytest.raises(ValueError, match="at least two"):
        parse_compare("attention=sdpa")
    p = build_parser()
    assert _settings(p.parse_args(["bench", "--precision", "auto"])).precision == "auto"
    assert _settings(p.parse_args(["bench", "--dtype", "bf16"])).precision == "bf16"
    assert "--dtype is deprecated" in capsys.readouterr().err
    assert _settings(p.parse_args(["bench", "--quick", "--batch-size", "3"])).batch_size == 3
    assert _settings(p.parse_args(["bench", "--quick"])).model == "JiT-T/2"
    assert main(["bench", "--quick", "--model", "JiT-Q/3"]) == 2
    assert "unknown model" in capsys.readouterr().err


@pytest.mark.parametrize(
    "optim, ema, foreach, ema_name",
    [
        ("loop", "loop", False, "jitkit.bench.variants.LoopEMA"),
        ("foreach", "lerp", True, "jitkit.bench.variants.LerpEMA"),
        ("fused", "foreach", None, "jitkit.train.ema.EMA"),
        ("foreach", "none", True, None),
    ],
)
def test_train_step_uses_the_optimizer_and_ema_asked_for(optim, ema, foreach, ema_name):
    step, info = prepare_train(SMALL.replace(optim=optim, ema=ema), torch.device("cpu"))
    assert info["ema"] == ema_name
    assert info["optimizer"]["class"] == "AdamW"
    if foreach is not None:
        assert info["optimizer"]["foreach"] is foreach and not info["optimizer"]["fused"]
    step()  # one more timed unit runs


def test_sample_unit_runs_either_cfg_mode():
    for mode in ("batched", "separate"):
        run, info = prepare_sample(SMALL.replace(cfg_mode=mode), torch.device("cpu"))
        run()
        # Heun with 2 steps: 2 evaluations, then the last step's one (Euler)
        assert info == {"batch_size": 2, "network_evaluations": 3, "cfg_mode": mode}


def test_sample_unit_takes_the_sampler_by_name():
    run, info = prepare_sample(SMALL.replace(sampler="dpm++2m", sample_steps=3), torch.device("cpu"))
    run()
    assert info["network_evaluations"] == 3  # one per step
    with pytest.raises(
        ConfigError,
        match=r"sampler must be one of \('heun', 'euler', 'dpm\+\+2m', 'dpm\+\+3m', 'dpm\+\+2m-pc', 'dpm\+\+3m-pc'\)",
    ):
        SMALL.replace(sampler="ddim")
    with pytest.raises(ConfigError, match="cfg_mode 'separate' .* heun only"):
        SMALL.replace(sampler="dpm++2m", cfg_mode="separate")


def test_compared_tf32_variants_are_timed_with_tf32_on_and_off(monkeypatch):
    """--compare tf32=1,0 on an Ampere GPU: every timed repeat of the tf32=0 variant runs with TF32 off
    (it was left on by the other variant before), each variant with its own GEMM probe. No GPU here: the
    compute capability is monkeypatched and the flags are read instead of timing a kernel."""
    from jitkit.bench import runner

    seen: list[tuple[bool, bool]] = []
    probes: list[bool] = []  # the TF32 state each GEMM probe was built under
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))

    def probe(device, dtype, n=None):
        probes.append(torch.backends.cuda.matmul.allow_tf32)
        return lambda: 1.0

    monkeypatch.setattr(runner, "gemm_probe", probe)

    def timed(fn, device, clock="wall"):
        seen.append((torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32))
        return 0.5

    monkeypatch.setattr(runner, "_timed", timed)
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        cases = [(SMALL.replace(tf32=True), "fp32", None), (SMALL.replace(tf32=False), "fp32", None)]
        times, peaks = runner._interleaved(cases, 2, torch.device("cuda"))
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
    assert seen == [(True, True), (False, False), (True, True), (False, False)]
    assert probes == [True, False]
    assert times == [[0.5, 0.5], [0.5, 0.5]] and peaks == [[1.0, 1.0], [1.0, 1.0]]


def test_tf32_is_recorded_as_asked_and_as_run(capsys):
    args = ["bench", "--quick", "--json", "--mode", "forward", "--device", "cpu", "--compare", "tf32=1,0"]
    assert main([*args, "--repeats", "1", "--warmup", "0"]) == 0
    res = _last_json(capsys)
    assert [v["settings"]["tf32"] for v in res["variants"]] == [True, False]
    assert [v["settings"]["tf32_resolved"] for v in res["variants"]] == [False, False]  # no TF32 on CPUs


def test_result_records_both_gemm_peaks_and_the_precision_choice(monkeypatch):
    """Every result has the float32 and the bf16 GEMM peak and how ``precision auto`` was decided (measured
    for the model on a CPU: here the probe is made to say bf16 pays off)."""
    import jitkit.models.registry as R
    from jitkit.bench.runner import run_bench
    from jitkit.bench.settings import QUICK, BenchSettings

    monkeypatch.setattr(R, "bf16_block_speedup", lambda *a, **k: {"peak_speedup": 7.0, "speedup": 3.0})
    s = BenchSettings().replace(
        **{**QUICK, "mode": "forward", "device": "cpu", "precision": "auto", "repeats": 1}
    )
    r = run_bench(s)
    assert set(r["gemm_peaks_flops"]) == {"fp32", "bf16"} and all(
        v > 0 for v in r["gemm_peaks_flops"].values()
    )
    assert r["settings"]["precision"] == "auto" and r["settings"]["precision_resolved"] == "bf16"
    assert r["settings"]["precision_choice"]["reason"] == "measured"
    assert r["gemm_peak_flops"] == r["gemm_peaks_flops"]["bf16"]  # MFU against the precision that ran


def test_settings_say_how_compile_compiles_each_mode():
    from jitkit.bench.settings import BenchSettings, settings_record

    s = BenchSettings(model="JiT-T/2", mode="train,forward,sample", compile=True)
    rec = settings_record(s, torch.device("cpu"), "fp32", False)
    assert rec["compiled_as"] == {"train": "blocks", "forward": "frozen graph", "sample": "frozen graph"}
    rec = settings_record(s.replace(compile_scope="model"), torch.device("cpu"), "fp32", False)
    assert rec["compiled_as"]["train"] == "model graph" and rec["compile_scope"] == "model"
    with pytest.raises(ConfigError, match="compile_scope"):
        s.replace(compile_scope="layers").validate()
