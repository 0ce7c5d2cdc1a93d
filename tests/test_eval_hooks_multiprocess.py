"""MULTI-PROCESS tests of jitkit.eval.hooks: each test starts 2 gloo processes (like ``torchrun
--nproc_per_node=2`` on CPU) and fails fast (both processes killed) when they do not finish in time, so a hang
in a collective fails the test instead of stalling CI.

* the shapes evaluation split over 2 ranks gives the metric and grid of the single-process run;
* FID/IS through a tiny random Inception stand-in split over 2 ranks equal the single-process result;
* ``jitkit.train.train(cfg, callbacks=[ShapesEval(...)])`` on 2 ranks (DDP, and FSDP) finishes and rank 0's
  eval.jsonl has the record.

This file is also the worker: ``python tests/test_eval_hooks_multiprocess.py MODE OUT [ARG]`` runs one rank
(WORLD_SIZE, RANK, MASTER_ADDR and MASTER_PORT from the environment; no process group when WORLD_SIZE is 1).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ranks
from PIL import Image

HERE = Path(__file__).resolve()
FID_NUM = 40  # 4 images per IS split; shares of 20 images on 2 ranks


def _spawn(args: list[str], world_size: int, timeout: float = 120.0) -> list[str]:
    """Run this file as ``world_size`` ranks with ``args`` = [mode, out, …] (conftest.run_ranks: killed and
    failed after ``timeout`` s; their output in a folder beside ``out``); their stderr."""
    out = Path(args[1])
    workdir = out.parent / f"{out.name}-logs"
    workdir.mkdir(parents=True, exist_ok=True)
    results = run_ranks(
        lambda r: [sys.executable, str(HERE), *args],
        world_size,
        workdir,
        timeout=timeout,
        env={"OMP_NUM_THREADS": "1"},
    )
    for r, (code, _out, err) in enumerate(results):
        assert code == 0, f"rank {r} of {args[0]} failed:\n{err[-3000:]}"
    return [err for _code, _out, err in results]


def _results(out: Path, world_size: int) -> list[dict]:
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(world_size)]


def _eval_log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]


def _pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _core(record: dict) -> dict:
    """An eval record without the wall-clock time and the file paths."""
    return {k: v for k, v in record.items() if k not in ("seconds", "grid", "ref")}


# -- the tests --------------------------------------------------------------------------------------------


def test_shapes_eval_split_over_two_ranks_equals_one_process(tmp_path):
    _spawn(["shapes", str(tmp_path / "one")], 1)
    _spawn(["shapes", str(tmp_path / "two")], 2)
    (one,), (r0, r1) = _results(tmp_path / "one", 1), _results(tmp_path / "two", 2)
    # the plan is split: rank r made images r, r+2, … (16 images, one per class), in fp32
    assert one["indices"] == list(range(16))
    assert r0["indices"] == list(range(0, 16, 2)) and r1["indices"] == list(range(1, 16, 2))
    assert r0["precision"] == r1["precision"] == "fp32"
    # rank 0 has the record; rank 1 returns None and writes nothing
    assert r1["record"] is None and r1["last"] is None
    rec = r0["record"]
    assert _core(rec) == _core(one["record"])  # accuracy, colour/shape accuracy, IoU, per class: exact
    assert rec["metric"] == "shapes" and rec["n"] == 16 and rec["step"] == 7
    assert _eval_log(tmp_path / "two") == [rec]
    assert np.array_equal(_pixels(rec["grid"]), _pixels(one["record"]["grid"]))
    # the grid is not trivially equal: another seed gives other pixels
    _spawn(["shapes", str(tmp_path / "seed1"), "1"], 1)
    (other,) = _results(tmp_path / "seed1", 1)
    assert not np.array_equal(_pixels(other["record"]["grid"]), _pixels(rec["grid"]))


def test_fid_eval_split_over_two_ranks_equals_one_process(tmp_path):
    """FID evaluation with a tiny random Inception stand-in split over 2 ranks equals the single-process result."""
    from test_eval_hooks import stand_in_ref_stats

    ref = stand_in_ref_stats(tmp_path / "ref.npz")
    _spawn(["fid", str(tmp_path / "one"), str(ref)], 1)
    _spawn(["fid", str(tmp_path / "two"), str(ref)], 2)
    (one,), (r0, r1) = _results(tmp_path / "one", 1), _results(tmp_path / "two", 2)
    assert r0["indices"] == list(range(0, FID_NUM, 2)) and r1["indices"] == list(range(1, FID_NUM, 2))
    assert r1["record"] is None and r1["last"] is None
    a, b = one["record"], r0["record"]
    assert b["n"] == a["n"] == FID_NUM and a["fid"] > 0 and a["inception_score"] > 1.05
    # the same images; the features only up to the rounding of the stand-in's conv at other batch sizes
    for k in ("fid", "inception_score", "inception_score_std"):
        assert b[k] == pytest.approx(a[k], rel=1e-6), k
    assert _eval_log(tmp_path / "two") == [b]


@pytest.mark.parametrize("fsdp", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["ddp", "fsdp"])
def test_training_with_the_shapes_eval_on_two_ranks_finishes(tmp_path, tiny, fsdp):
    """The end-of-run evaluation through the trainer on 2 ranks: no hang, rank 0 writes the one record."""
    d = tiny.run_dict(tmp_path / "run", accum_steps=1, epochs=1, fsdp=fsdp)
    errs = _spawn(["train", str(tmp_path / "run"), json.dumps(d)], 2)
    (rec,) = _eval_log(tmp_path / "run")
    r0, r1 = _results(tmp_path / "run", 2)
    assert r0["record"] == rec and r1["record"] is None
    assert rec["event"] == "end" and rec["metric"] == "shapes" and rec["n"] == 16 and rec["step"] == 4
    assert r0["indices"] == list(range(0, 16, 2)) and r1["indices"] == list(range(1, 16, 2))
    assert r0["precision"] == r1["precision"] == "fp32"  # the training precision ("auto" on CPU)
    assert Path(rec["grid"]).is_file()
    assert "[eval] step 4" in errs[0] and "[eval]" not in errs[1]  # only rank 0 prints


# -- the worker (one rank) ----------------------------------------------------------------------------------


def _worker(mode: str, out: Path, arg: str | None) -> None:
    import torch

    torch.set_num_threads(1)
    import conftest

    from jitkit.config import SamplerConfig
    from jitkit.diffusion import generate
    from jitkit.eval import hooks

    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    seen: dict = {}
    real = generate.generate_images

    def spy(*a, **kw):  # what this rank generates for an evaluation, and in which precision
        if str(kw.get("desc", "")).startswith("eval"):
            idx = kw.get("indices")
            seen.setdefault("indices", []).extend(int(i) for i in (range(len(a[1])) if idx is None else idx))
            seen["precision"] = kw["precision"]
        return real(*a, **kw)

    generate.generate_images = spy
    out.mkdir(parents=True, exist_ok=True)
    if mode == "train":
        from jitkit.config import resolve_run_config
        from jitkit.train import train

        cfg = resolve_run_config(json.loads(arg))
        cb = hooks.ShapesEval(per_class=1, sampler=cfg.sampler, progress=False)
        train(cfg, callbacks=[cb], progress=False, run_dir=out)
        result = {"record": cb.last}
    else:
        import datetime

        if world > 1:
            torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
        info = {"step": 7, "epoch": 2, "run_dir": str(out), "config": None, "precision": "fp32"}
        info |= {"rank": rank, "world_size": world, "is_main": rank == 0}
        scfg = SamplerConfig(method="euler", steps=2)
        if mode == "shapes":
            den = conftest.tiny_denoiser(conftest.tiny_model_config(img_size=16, num_classes=16))
            seed = int(arg) if arg else 3
            cb = hooks.ShapesEval(per_class=1, seed=seed, batch_size=3, sampler=scfg, progress=False)
        else:
            from test_eval_hooks import StandInFeatures

            den = conftest.tiny_denoiser(std=0.3)
            kw = dict(num=FID_NUM, batch_size=6, sampler=scfg, seed=1, progress=False)
            cb = hooks.FIDEval(arg, **kw, extractor=StandInFeatures())
        result = {"record": cb("end", {**info, "denoiser": den})}
        if world > 1:
            torch.distributed.destroy_process_group()
    result |= {"last": cb.last, **seen}
    (out / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _worker(sys.argv[1], Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else None)
