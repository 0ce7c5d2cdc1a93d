"""Shared fixtures: the ``shared/`` folder (golden outputs) and the tiny models every test builds on.

``tiny`` gives factories rather than objects, so each test states what it changes:

* ``tiny.model_config(**kw)``: a 2-block JiT on 8 px images, 3 classes (a few thousand parameters);
* ``tiny.denoiser(cfg=None, seed=0, std=0.1)``: its Denoiser in eval mode with random non-zero weights
  (the reference init zeroes the output layer, which would make every prediction x̂ = 0);
* ``tiny.run_dict(out, **train)`` / ``tiny.run_config(out, **train)``: a shapes run of a 16 px tiny JiT that
  trains in about a second (3 epochs of 32 images, micro-batch 4 × accumulation 2).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

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


# ``precision auto`` measures bf16 against fp32 on CPUs (bf16 on AMX machines for large enough models): the
# suite switches the probe off so that it decides alike on every CPU, in subprocesses too; tests of the
# decision monkeypatch the probe or delete the variable.
os.environ["JITKIT_BF16_PROBE"] = "off"


@pytest.fixture(autouse=True)
def _torch_threads():
    # keep tests predictable on small shared machines
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


# tests/extra_eval needs the optional extra (torch-fidelity + a matching torchvision) in its own venv; it is
# run by .ci/extra-eval (called from .ci/run), which sets JITKIT_EXTRA_EVAL=1.
collect_ignore = [] if os.environ.get("JITKIT_EXTRA_EVAL") == "1" else ["extra_eval"]


# -- tiny models -----------------------------------------------------------------------------------------

TINY_MODEL = dict(
    name="tiny",
    img_size=8,
    patch_size=4,
    hidden_size=32,
    depth=2,
    num_heads=2,
    bottleneck_dim=8,
    in_context_len=2,
    in_context_start=1,
    num_classes=3,
)

# a tiny JiT for the shapes data (16 px, 16 classes) that the training tests run end to end
TINY_RUN_MODEL = dict(TINY_MODEL, name="JiT-T/4", img_size=16, num_classes=16)


def tiny_model_config(**kw):
    from jitkit.config import ModelConfig

    return ModelConfig(**{**TINY_MODEL, **kw})


def tiny_denoiser(cfg=None, seed: int = 0, std: float = 0.1, diffusion=None):
    from jitkit.config import DiffusionConfig
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    cfg = cfg or tiny_model_config()
    torch.manual_seed(seed)
    net = build_model(cfg)
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and p.requires_grad:
                torch.nn.init.normal_(p, std=std)
    return Denoiser(net, diffusion or DiffusionConfig(), cfg.num_classes).eval()


def tiny_run_dict(out: Path, **train_kw) -> dict:
    from jitkit.config import merge_dicts, preset_dict

    return merge_dicts(
        preset_dict("shapes"),
        {
            "model": TINY_RUN_MODEL,
            "data": {"per_class": 2},
            "sampler": {"steps": 2},
            "train": {
                "out": str(out),
                "epochs": 3,
                "batch_size": 4,
                "accum_steps": 2,
                "blr": 1e-2,
                "warmup_epochs": 1.0,
                "log_every": 1,
                "ema_decay1": 0.9,
                "ema_decay2": 0.5,
                "threads": 1,
                **train_kw,
            },
        },
    )


def tiny_run_config(out: Path, **train_kw):
    from jitkit.config import resolve_run_config

    return resolve_run_config(tiny_run_dict(out, **train_kw))


@pytest.fixture(scope="session")
def tiny() -> SimpleNamespace:
    return SimpleNamespace(
        MODEL=TINY_MODEL,
        RUN_MODEL=TINY_RUN_MODEL,
        model_config=tiny_model_config,
        denoiser=tiny_denoiser,
        run_dict=tiny_run_dict,
        run_config=tiny_run_config,
    )


# -- several processes, as torchrun starts them ------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(
    argv_of_rank,
    world: int,
    workdir: Path,
    *,
    timeout: float,
    env: dict | None = None,
    port: int | None = None,
    local_world: int | None = None,
) -> list[tuple[int, str, str]]:
    """Start one process per rank with torchrun's environment (WORLD_SIZE, RANK, LOCAL_RANK,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) and return (returncode, stdout, stderr) of each.

    ``argv_of_rank(rank)`` gives a process's command line. Output goes to files (a full pipe cannot block a
    rank that another waits for). A hang fails fast: after ``timeout`` seconds every process still running is
    killed and the test fails naming those ranks, with the end of their output.
    """
    import subprocess
    import time

    port = port or free_port()
    local_world = local_world or world
    base = dict(os.environ, WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    base.update(env or {})
    procs, files = [], []
    for r in range(world):
        out, err = workdir / f"rank{r}.out", workdir / f"rank{r}.err"
        fo, fe = open(out, "w"), open(err, "w")  # noqa: SIM115 - closed below
        files.append((fo, fe, out, err))
        rank_env = dict(base, RANK=str(r), LOCAL_RANK=str(r % local_world), LOCAL_WORLD_SIZE=str(local_world))
        procs.append(subprocess.Popen(argv_of_rank(r), env=rank_env, stdout=fo, stderr=fe, text=True))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(p.poll() is None for p in procs):
        time.sleep(0.1)
    hung = [r for r, p in enumerate(procs) if p.poll() is None]
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    results = []
    for p, (fo, fe, out, err) in zip(procs, files):
        fo.close()
        fe.close()
        results.append((p.returncode, out.read_text(), err.read_text()))
    if hung:
        tails = "\n".join(f"--- rank {r} stderr:\n{results[r][2][-1500:]}" for r in hung)
        pytest.fail(f"ranks {hung} still running after {timeout:.0f} s (a hang); killed them\n{tails}")
    return results
