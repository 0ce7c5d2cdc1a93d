"""jitkit bench: the analytic FLOP counter and the quick benchmark's JSON."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jitkit.bench.flops import flops_per_image, forward_macs
from jitkit.bench.runner import BenchSettings, parse_compare
from jitkit.cli import main
from jitkit.config import ModelConfig
from jitkit.models.jit import JiT
from jitkit.models.linear import onednn_available

TINY = ModelConfig(
    name="tiny",
    img_size=8,
    patch_size=4,
    hidden_size=16,
    depth=2,
    num_heads=2,
    bottleneck_dim=4,
    in_context_len=2,
    in_context_start=1,
    num_classes=3,
)


def test_flops_match_hand_count():
    # N = (8/4)² = 4 tokens, D = 16, SwiGLU hidden m = int(int(16·4)·2/3) = 42, bottleneck b = 4, C = 3,
    # p = 4, L = 2 in-context tokens from block 1 on (block 0: T = 4, block 1: T = 6).
    assert TINY.mlp_hidden == 42
    patch = 4 * (3 * 4 * 4 * 4 + 4 * 16)  # N·(C·p²·b + b·D) = 4·(192 + 64) = 1024
    time_mlp = 256 * 16 + 16 * 16  # F·D + D·D = 4352
    # block 0, T = 4: adaLN 16·96 + qkv 4·16·48 + q·kᵀ 4·4·16 + a·v 4·4·16 + proj 4·16·16
    #                 + SwiGLU 4·16·84 + 4·42·16  = 1536 + 3072 + 256 + 256 + 1024 + 5376 + 2688
    block0 = 1536 + 3072 + 256 + 256 + 1024 + 5376 + 2688  # 14208
    # block 1, T = 6: 1536 + 6·16·48 + 6·6·16 + 6·6·16 + 6·16·16 + 6·16·84 + 6·42·16
    block1 = 1536 + 4608 + 576 + 576 + 1536 + 8064 + 4032  # 20928
    final = 16 * 32 + 4 * 16 * 48  # adaLN D·2D + N·D·p²C = 512 + 3072
    macs = patch + time_mlp + block0 + block1 + final
    assert macs == 44096
    assert sum(forward_macs(TINY).values()) == macs
    fl = flops_per_image(TINY)
    assert fl["forward"] == 2 * macs == 88192
    assert fl["train"] == 3 * fl["forward"]


@pytest.mark.parametrize("cfg", [TINY, TINY.replace(in_context_len=0, depth=3, patch_size=2)])
def test_flops_match_torch_flop_counter(cfg):
    # torch's own counter over the matmul/conv/bmm ops of an actual forward (math attention path so that
    # the two attention products are plain matmuls), for a batch of 3
    net = JiT(cfg.replace(attention="math-fp32")).eval()
    B = 3
    x = torch.randn(B, 3, cfg.img_size, cfg.img_size)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        net(x, torch.rand(B), torch.randint(0, cfg.num_classes, (B,)))
    assert fc.get_total_flops() == B * flops_per_image(cfg)["forward"]


def test_jit_b16_flops_order_of_magnitude():
    from jitkit.config import model_config

    f = flops_per_image(model_config("JiT-B/16"))["forward"]
    # B/16 at 256 px is about 25 GMACs per image (the paper lists ~25 Gflops counted as MACs)
    assert 45e9 < f < 55e9


REQUIRED = (
    "train_img_per_s",
    "forward_img_per_s",
    "sample_img_per_s",
    "peak_mem_mib",
    "flops_per_img",
    "mfu",
)
SETTINGS = ("model", "img_size", "batch_size", "device", "dtype", "threads", "torch", "cpu", "device_name")


def test_quick_bench_json_has_every_field(capsys):
    assert main(["bench", "--quick", "--json", "--threads", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    res = json.loads(out[-1])
    for k in REQUIRED:
        assert isinstance(res[k], float) and res[k] > 0, k
    for k in SETTINGS:
        assert res["settings"][k] not in (None, ""), k
    assert res["settings"]["threads"] == 1
    assert res["settings"]["model"] == "JiT-T/2"
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
    # which float32 CPU GEMM the layers and the peak ran on, and how memory was handled, are recorded
    assert res["settings"]["cpu_linear_backend"] in ("onednn", "aten")
    assert res["details"]["gemm"]["backend"] in ("onednn", "torch.mm")
    assert res["settings"]["malloc"].startswith("retain") or res["settings"]["malloc"] == "default"


@pytest.mark.skipif(not onednn_available(), reason="this torch build has no oneDNN kernels")
def test_pinned_cpu_linear_backend_is_what_the_layers_ran_on(capsys):
    rc = main(["bench", "--quick", "--json", "--mode", "forward", "--compare", "cpu_linear=aten,onednn"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [v["settings"]["cpu_linear_backend"] for v in res["variants"]] == ["aten", "onednn"]
    assert all(v["forward_img_per_s"] > 0 for v in res["variants"])


def test_quick_compare_reports_ratios(capsys):
    rc = main(["bench", "--quick", "--json", "--mode", "forward", "--compare", "attention=sdpa,math-fp32"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["compare"] == "attention" and res["values"] == ["sdpa", "math-fp32"]
    assert [v["settings"]["attention"] for v in res["variants"]] == ["sdpa", "math-fp32"]
    assert res["ratios"]["sdpa"]["forward_img_per_s"] == 1.0
    r = res["variants"][1]["forward_img_per_s"] / res["variants"][0]["forward_img_per_s"]
    assert res["ratios"]["math-fp32"]["forward_img_per_s"] == pytest.approx(r)
    assert res["variants"][0]["train_img_per_s"] is None  # mode forward only


def test_settings_parsing_and_errors(capsys):
    s = BenchSettings()
    assert s.with_value("grad_checkpoint", "1").grad_checkpoint is True
    assert s.with_value("batch_size", "8").batch_size == 8
    assert parse_compare("grad-checkpoint=0,1") == ("grad_checkpoint", ["0", "1"])
    with pytest.raises(ValueError, match="unknown setting"):
        s.with_value("colour", "red")
    with pytest.raises(ValueError, match="expects a value"):
        s.with_value("batch_size", "many")
    with pytest.raises(ValueError, match="KEY=a,b"):
        parse_compare("attention")
    assert main(["bench", "--quick", "--model", "JiT-Q/3"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_separate_cfg_sampler_matches_the_library_sampler():
    # the "before" variant of the batched-CFG optimisation must compute the same images
    from jitkit.bench.runner import sample_separate_cfg
    from jitkit.config import DiffusionConfig, SamplerConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.diffusion.sampling import sample

    torch.manual_seed(0)
    net = JiT(TINY)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    den = Denoiser(net, DiffusionConfig(), TINY.num_classes).eval()
    z0 = torch.randn(2, 3, 8, 8)
    y = torch.tensor([0, 2])
    sc = SamplerConfig(method="heun", steps=6, cfg=2.9, interval=(0.1, 1.0))

    def vel(z, t, yy):
        return den.predict(z, t, yy, "v")

    a = sample(vel, z0, y, sc, TINY.num_classes)
    b = sample_separate_cfg(vel, z0, y, sc, TINY.num_classes)
    assert (a - z0).abs().max() > 1e-3
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cpu_peak_memory_sees_a_temporary_allocation():
    from jitkit.bench.hardware import PeakMemory

    mem = PeakMemory(torch.device("cpu"))
    mem.start()
    x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    x.add_(1)
    del x  # freed again: only the high-water mark remembers it
    peak = mem.stop()
    assert "cpu" in mem.kind
    assert 60 <= peak < 2000


def test_gemm_peak_is_a_positive_rate():
    from jitkit.bench.hardware import gemm_peak

    p = gemm_peak(torch.device("cpu"), n=128, seconds=0.05)
    assert p["flops"] >= p["median_flops"] > 0


_REFAULT = """
import resource, sys, torch
from jitkit.bench.hardware import retain_freed_memory
if sys.argv[1] == "1":
    print(retain_freed_memory())
def faults():
    a = torch.empty(2048, 2048)  # 16 MiB (a GEMM probe's output): glibc maps or trims such a block on free
    a.fill_(1.0)
    del a
def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
big = torch.empty(64, 2**20)  # 256 MiB touched and freed first, as a training step's activations are
big.fill_(1.0)
del big
faults()
before = minflt()
faults()
print(minflt() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_retained_memory_is_not_faulted_in_again():
    # a re-allocated 16 MiB buffer costs ~4,000 page faults by default and almost none once freed memory is kept
    def run(flag: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, "-c", _REFAULT, flag], capture_output=True, text=True, check=True
        )
        return out.stdout.split()

    default = int(run("0")[-1])
    kept = run("1")
    assert kept[0] == "retain", kept
    assert default > 2000
    assert int(kept[-1]) < 1000
