"""The plan of a sampling job: its labels without an array of N, and the memory its outputs need.

``LabelPlan`` holds the labels as runs (class, count), so image i's label is computed from i: a job of 10⁹
images costs a few bytes per class. ``check_outputs_fit`` refuses, before any image is made, an npz or grid
(written whole) that cannot fit in memory; a sample folder streams and never needs it. Used by
:mod:`jitkit.eval.sample_folder` (and ``jitkit sample``, which checks a plan before loading the weights).

Shape key: N images, C channels, S side.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.diffusion.generate import balanced_counts
from jitkit.runtime.memory import fmt_bytes

__all__ = ["OUTPUT_MEMORY_FRACTION", "LabelPlan", "check_outputs_fit", "output_bytes"]

OUTPUT_MEMORY_FRACTION = 0.8  # an npz/grid is refused when its estimated bytes exceed this much free memory


class LabelPlan:
    """The labels of a sampling job as runs ``(class, count)``, class-major: image i's label is computed
    from i, so a plan of 10⁹ images costs a few bytes per run, not 8 GB.

    ``LabelPlan.balanced`` gives the plan of :func:`jitkit.diffusion.generate.balanced_labels` (the same
    labels); ``LabelPlan.of`` the plan of any label array.
    """

    def __init__(self, runs: Iterable[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for c, k in runs:
            c, k = int(c), int(k)
            if k < 0:
                raise ValueError(f"a run of labels needs a count >= 0, found {k} for class {c}")
            if k == 0:
                continue
            if merged and merged[-1][0] == c:
                merged[-1][1] += k
            else:
                merged.append([c, k])
        self.runs = [(c, k) for c, k in merged]
        self._classes = np.asarray([c for c, _ in self.runs], dtype=np.int64)
        self._ends = np.cumsum([k for _, k in self.runs], dtype=np.int64)  # run r ends before _ends[r]

    @classmethod
    def of(cls, labels: Any) -> LabelPlan:
        """The plan of a label array (or tensor, or list): its runs of equal labels."""
        y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, dtype=np.int64).reshape(
            -1
        )
        if not len(y):
            return cls([])
        starts = np.r_[0, np.flatnonzero(np.diff(y)) + 1]
        counts = np.diff(np.r_[starts, len(y)])
        return cls(zip(y[starts].tolist(), counts.tolist()))

    @classmethod
    def balanced(
        cls,
        num_classes: int,
        *,
        classes: Sequence[int] | None = None,
        per_class: int | None = None,
        num: int | None = None,
    ) -> LabelPlan:
        """The labels of :func:`jitkit.diffusion.generate.balanced_counts` (and of ``balanced_labels``)."""
        return cls(balanced_counts(num_classes, classes=classes, per_class=per_class, num=num))

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def labels(self, indices: Any) -> np.ndarray:
        """The labels [len(indices)] of plan ``indices``."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= len(self)):
            raise IndexError(f"plan indices must lie in [0, {len(self) - 1}], found {idx.min()}..{idx.max()}")
        return self._classes[np.searchsorted(self._ends, idx, side="right")]

    def chunks(self, size: int = 1 << 20) -> Iterator[tuple[int, np.ndarray]]:
        """(first index, labels) of consecutive pieces of at most ``size`` labels, in order."""
        for s in range(0, len(self), size):
            yield s, self.labels(np.arange(s, min(s + size, len(self))))

    def array(self) -> np.ndarray:
        """All labels [N] (for plans small enough to hold)."""
        return self.labels(np.arange(len(self)))

    def class_counts(self) -> dict[int, int]:
        """Images per class (a class may appear in several runs)."""
        out: dict[int, int] = {}
        for c, k in self.runs:
            out[c] = out.get(c, 0) + k
        return out

    def digest(self) -> str:
        """A short hash of the labels (from the runs: the same for equal label sequences)."""
        return hashlib.sha256(json.dumps(self.runs).encode()).hexdigest()[:16]


def output_bytes(plan: LabelPlan, shape: tuple[int, int, int], *, npz: bool, grid: bool) -> int:
    """Estimated peak bytes of writing ``plan``'s images of ``shape`` (C, S, S) as an npz and/or a grid,
    which hold every image at once: the images, the npz's NHWC copy, and for a grid the images enlarged to
    64 px, the grid and its PNG."""
    n, (C, S, _) = len(plan), shape
    need = n * C * S * S if (npz or grid) else 0
    if npz:
        need += n * C * S * S  # to_hwc's copy
    if grid:
        T = S * max(1, -(-64 // S))  # make_grid's enlarged side
        counts = plan.class_counts()
        cells = len(counts) * max(counts.values(), default=0)
        need += n * 3 * T * T + 3 * cells * 3 * (T + 2) ** 2
    return need


def check_outputs_fit(
    plan: LabelPlan,
    shape: tuple[int, int, int],
    *,
    npz: str | Path | None = None,
    grid: str | Path | None = None,
    available: int | None = None,
) -> None:
    """Refuse, before any image is made, an npz or grid of ``plan`` that cannot fit in memory (``available``:
    free bytes, default this host's). A sample folder (out_dir) never needs this: it streams."""
    if npz is None and grid is None:
        return
    if available is None:
        from jitkit.runtime.memory import host_available_memory

        available = host_available_memory()
    need = output_bytes(plan, shape, npz=npz is not None, grid=grid is not None)
    if available is None or need <= OUTPUT_MEMORY_FRACTION * available:
        return
    what = " and ".join(f"{k}={v}" for k, v in (("npz", npz), ("grid", grid)) if v is not None)
    raise ValueError(
        f"{what}: {len(plan):,} images of {shape[1]}×{shape[2]} px would need about {fmt_bytes(need)} of memory at "
        f"once (an npz or a grid is written whole), more than the {fmt_bytes(available)} available; write a sample "
        f"folder instead (out_dir=DIR: streamed and resumable, any size) or ask for fewer images"
    )
