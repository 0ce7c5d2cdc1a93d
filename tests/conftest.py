from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def find_shared() -> Path:
    env = os.environ.get("JITKIT_SHARED")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared", REPO / "shared"]:
        if (cand / "JIT_SPEC.md").exists():
            return cand
    raise FileNotFoundError(
        "shared/ (with JIT_SPEC.md and golden/) not found beside the repository; set JITKIT_SHARED"
    )


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return find_shared()


@pytest.fixture(autouse=True)
def _torch_threads():
    # keep tests predictable on small shared machines
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


# tests/extra_eval needs the optional extra (torch-fidelity + a matching torchvision) in its own venv; it is
# run by .ci/extra-eval (called from .ci/run), which sets JITKIT_EXTRA_EVAL=1.
collect_ignore = [] if os.environ.get("JITKIT_EXTRA_EVAL") == "1" else ["extra_eval"]
