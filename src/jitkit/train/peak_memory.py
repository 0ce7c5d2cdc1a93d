"""The measured peak memory of CPU training steps, which checks the planner's estimate
(:func:`jitkit.train.planner.estimate_memory`; the test runs it in fresh processes and requires the estimate
within 25 %).

The peak is the kernel's high-water mark of the process's memory (VmHWM), reset to the current RSS through
/proc/self/clear_refs before the model is built; ``ru_maxrss`` is the fallback where /proc does not allow that.
"""

from __future__ import annotations

import os

from jitkit.config import ModelConfig

__all__ = ["measure_peak_cpu"]


def measure_peak_cpu(cfg: ModelConfig, micro_batch: int, steps: int = 2) -> dict[str, int]:
    """Measure a training step's peak memory on CPU *in this process*: peak RSS growth over the RSS after
    importing torch (run it in a fresh subprocess so nothing else has touched the heap)."""
    import gc
    import resource

    import torch

    from jitkit.config import DiffusionConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.jit import JiT
    from jitkit.train.ema import EMA

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    torch.set_num_threads(1)
    # warm up torch's lazy initialisation on a throwaway tiny model so it does not count
    tiny = Denoiser(
        JiT(
            cfg.replace(
                depth=1,
                hidden_size=16,
                num_heads=1,
                bottleneck_dim=4,
                in_context_len=0,
                in_context_start=0,
                img_size=cfg.patch_size,
            )
        ),
        DiffusionConfig(),
        cfg.num_classes,
    )
    tl = tiny.loss(torch.zeros(1, 3, cfg.patch_size, cfg.patch_size), torch.zeros(1, dtype=torch.long))
    tl.backward()
    torch.optim.AdamW(tiny.parameters(), foreach=True).step()
    del tiny, tl
    gc.collect()
    base = rss()
    # The peak is the kernel's high-water mark of this process's memory (VmHWM), reset here to the current
    # RSS through /proc/self/clear_refs. ru_maxrss is only a fallback: Linux carries it over from the parent
    # across fork + exec, so in a child of a large process it starts at the parent's size.
    hwm_reset = _reset_hwm()
    peak_before = base if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    torch.manual_seed(0)
    den = Denoiser(JiT(cfg), DiffusionConfig(), cfg.num_classes)
    opt = torch.optim.AdamW([p for p in den.parameters() if p.requires_grad], lr=1e-4, foreach=True)
    ema = EMA(den, (0.9999, 0.9996))
    x = torch.randn(micro_batch, cfg.in_channels, cfg.img_size, cfg.img_size)
    y = torch.zeros(micro_batch, dtype=torch.long)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        den.loss(x, y).backward()
        opt.step()
        ema.update(den)
    peak = _read_hwm() if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"base": base, "peak": peak, "peak_before": peak_before, "growth": peak - max(base, peak_before)}


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux ≥ 4.0); False where /proc does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _read_hwm() > 0
    except OSError:
        return False


def _read_hwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0
