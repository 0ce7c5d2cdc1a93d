"""The runtime layer: one device resolution, one precision vocabulary, one autocast context."""

from __future__ import annotations

import pytest
import torch

from jitkit.runtime import amp_dtype, autocast, resolve_device, resolve_precision


def test_device_resolution_explains():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(ValueError, match="auto, cpu, cuda, cuda:N or mps, found 'tpu'"):
        resolve_device("tpu")


def test_precision_vocabulary_is_one_for_every_command():
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(ValueError, match="fp16 is not supported on CPU"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16, fp16, found 'fp64'"):
        resolve_precision("fp64", cpu)
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        amp_dtype("auto")


def test_autocast_runs_matmuls_in_the_chosen_dtype_only():
    a = torch.randn(4, 4)
    with autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
        assert (a + a).dtype == torch.float32  # element-wise ops keep their dtype


def test_auto_precision_on_a_cpu_follows_the_measured_probe():
    """bf16 only where the CPU's bf16 GEMM is at least 2× its fp32 GEMM *and* the model's own linears (casts
    included) are at least 1.25× faster; without a probe, and on weaker CPUs, fp32."""
    from jitkit.runtime import choose_precision

    def probe(peak, model):
        return lambda: {"peak_speedup": peak, "speedup": model}

    cpu = torch.device("cpu")
    assert choose_precision("auto", cpu, probe(7.0, 2.7))[0] == "bf16"  # AMX-class CPU, a large model
    assert choose_precision("auto", cpu, probe(7.0, 0.6))[0] == "fp32"  # … a tiny model: casts dominate
    assert choose_precision("auto", cpu, probe(1.8, 1.5))[0] == "fp32"  # no bf16 units worth the name
    assert choose_precision("auto", cpu)[0] == "fp32"
    chosen, rec = choose_precision("auto", cpu, probe(7.0, 2.7))
    assert rec["reason"] == "measured" and rec["peak_speedup"] == 7.0 and rec["requested"] == "auto"
    # explicit choices are not measured
    calls = []
    assert choose_precision("bf16", cpu, lambda: calls.append(1) or {})[0] == "bf16" and not calls


def test_auto_precision_on_gpus_needs_native_bf16(monkeypatch):
    from jitkit.runtime import device as D

    monkeypatch.setattr(D, "native_bf16", lambda dev: True)
    assert D.choose_precision("auto", "cuda")[0] == "bf16"
    monkeypatch.setattr(D, "native_bf16", lambda dev: False)
    assert D.choose_precision("auto", "cuda")[0] == "fp16"  # T4 / V100: fp16 + GradScaler
    assert D.choose_precision("auto", "mps")[0] == "fp32"
    assert D.needs_grad_scaler("fp16", "cuda") and D.needs_grad_scaler("fp16", "mps")
    assert not D.needs_grad_scaler("bf16", "cuda")


def test_a_missing_extra_says_what_to_install_and_is_an_input_error(monkeypatch) -> None:
    """require_extra imports the module, or raises MissingExtra — an ImportError and a ValueError (which the
    command line reports with exit code 2) naming the purpose, the module and the pip extra."""
    import sys

    from jitkit.runtime.extras import MissingExtra, require_extra

    assert require_extra("json", "none", "a test").dumps([1]) == "[1]"
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(MissingExtra) as info:
        require_extra("webdataset", "wds", "reading WebDataset shards", hint="(see the README)")
    e = info.value
    assert isinstance(e, ImportError) and isinstance(e, ValueError) and e.name == "webdataset"
    msg = str(e)
    assert msg.startswith(
        "reading WebDataset shards needs the webdataset package: pip install 'jitkit[wds]'."
    )
    assert "(see the README)" in msg and "import webdataset failed" in msg
