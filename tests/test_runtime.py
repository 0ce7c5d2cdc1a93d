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
