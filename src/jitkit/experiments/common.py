"""What the two experiments share: the output folder and thread count, the record of the machine they ran
on, and the matplotlib figure writer (headless, atomic)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from jitkit.fileio import atomic_save_figure


def start_run(out: str | Path, threads: int) -> Path:
    """Create the folder ``out`` and set torch's thread count (``threads`` 0: leave torch's setting)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if threads:
        torch.set_num_threads(threads)
    return out


def machine_record() -> dict[str, Any]:
    """``torch_threads`` and ``load_average`` (1, 5, 15 minutes; None where the OS has none) for results."""
    return {
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the headless Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, dpi: int) -> Path:
    """Write ``fig`` to ``path`` atomically (the format from the suffix) and close it."""
    atomic_save_figure(fig, path, dpi=dpi)
    pyplot().close(fig)
    return path
