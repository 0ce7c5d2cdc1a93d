"""jitkit.checkpoint: round trip, atomic replacement, kill-safety, path forms, mismatch and disk-full errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from jitkit.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    DiskFullError,
    check_state_dict,
    find_checkpoints,
    latest_checkpoint,
    load_checkpoint,
    load_denoiser,
    save_checkpoint,
)
from jitkit.config import DiffusionConfig, RunConfig, model_config
from jitkit.diffusion.flow import Denoiser
from jitkit.models.registry import build_model

TINY = dict(
    img_size=8, num_classes=3, depth=2, hidden_size=32, num_heads=2, bottleneck_dim=8, in_context_len=2
)


def tiny_cfg(**kw) -> RunConfig:
    m = model_config("JiT-T/4", **{**TINY, **kw})
    return RunConfig(model=m)


def tiny_denoiser(cfg: RunConfig, seed: int = 0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(build_model(cfg.model), DiffusionConfig(), cfg.model.num_classes)


def _save(path, cfg, den, step=1, state=None):
    sd = den.state_dict()
    ema = {k: v + 1.0 for k, v in sd.items()}
    return save_checkpoint(
        path,
        config=cfg,
        classes=["a", "b", "c"],
        model=sd,
        ema1=ema,
        ema2=sd,
        state=state if state is not None else {"step": step, "optimizer": {"x": torch.ones(3)}},
        meta={"step": step, "epoch": 0},
    )


def test_round_trip_and_layout(tmp_path):
    cfg = tiny_cfg()
    den = tiny_denoiser(cfg)
    ck = _save(tmp_path / "run" / "checkpoints" / "last", cfg, den, step=7)
    assert sorted(p.name for p in ck.iterdir()) == sorted(
        ["model.safetensors", "ema1.safetensors", "ema2.safetensors", "state.pt", "meta.json"]
    )
    meta = json.loads((ck / "meta.json").read_text())
    assert meta["step"] == 7 and meta["classes"] == ["a", "b", "c"] and meta["config"] == cfg.to_dict()
    loaded = load_checkpoint(tmp_path / "run")  # run folder → latest checkpoint
    assert loaded.config == cfg and loaded.classes == ["a", "b", "c"] and loaded.step == 7
    for k, v in den.state_dict().items():
        assert torch.equal(loaded.model[k], v)
        assert torch.equal(loaded.ema1[k], v + 1.0)
    assert torch.equal(loaded.state["optimizer"]["x"], torch.ones(3))
    # EMA1 by default, raw weights on request; eval mode; same outputs as the saved module
    d1, rc, classes = load_denoiser(tmp_path / "run" / "checkpoints" / "last" / "meta.json", ema="none")
    assert not d1.training and classes == ["a", "b", "c"] and rc == cfg
    z, t, y = torch.randn(2, 3, 8, 8), torch.rand(2), torch.tensor([0, 2])
    den.eval()
    assert torch.equal(d1.predict(z, t, y), den.predict(z, t, y))
    d2, _, _ = load_denoiser(tmp_path / "run", ema="1")
    assert torch.equal(d2.net.final_layer.linear.bias, den.net.final_layer.linear.bias + 1.0)


def test_replacing_last_keeps_only_new_and_latest_wins(tmp_path):
    cfg = tiny_cfg()
    root = tmp_path / "checkpoints"
    _save(root / "last", cfg, tiny_denoiser(cfg, 0), step=1)
    _save(root / "last", cfg, tiny_denoiser(cfg, 1), step=2)
    assert [p.name for p in root.iterdir()] == ["last"]  # no temp or backup folders left
    assert load_checkpoint(root).step == 2
    _save(root / "step-000005", cfg, tiny_denoiser(cfg, 2), step=5)
    assert latest_checkpoint(tmp_path) == root / "step-000005"


def test_backup_is_found_when_last_is_missing(tmp_path):
    """A kill between 'rename last → backup' and 'rename temp → last' leaves only the backup."""
    cfg = tiny_cfg()
    root = tmp_path / "checkpoints"
    _save(root / "last", cfg, tiny_denoiser(cfg), step=3)
    os.replace(root / "last", root / ".old-last-deadbeef")
    (root / ".tmp-last-1-abc").mkdir()  # an incomplete temp folder is ignored
    found = find_checkpoints(root)
    assert [p.name for _, p in found] == [".old-last-deadbeef"]
    assert load_checkpoint(tmp_path).step == 3


_WRITER = textwrap.dedent(
    """
    import sys, torch
    from jitkit.checkpoint import save_checkpoint
    from jitkit.config import RunConfig
    cfg = RunConfig()
    root = sys.argv[1]
    v = 0
    while True:
        v += 1
        sd = {f"w{i}": torch.full((512, 1024), float(v)) for i in range(6)}  # 12 MiB per file
        save_checkpoint(root + "/last", config=cfg, classes=["x"], model=sd, ema1=sd, ema2=sd,
                        state={"step": v}, meta={"step": v})
        print(v, flush=True)
    """
)


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for trial, delay in enumerate((0.07, 0.31)):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            line = proc.stdout.readline()  # first checkpoint complete
            assert line.strip(), proc.stderr.read()
            time.sleep(delay)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        ck = load_checkpoint(root)
        v = ck.step
        assert v >= 1
        for name in ("model", "ema1", "ema2"):
            sd = getattr(ck, name)
            assert all(torch.all(t == float(v)) for t in sd.values()), (trial, name)
        assert ck.state["step"] == v


def test_file_vs_folder_errors(tmp_path):
    cfg = tiny_cfg()
    with pytest.raises(FileNotFoundError, match="expected a run folder"):
        load_checkpoint(tmp_path / "missing")
    ref = tmp_path / "checkpoint-last.pth"
    torch.save({"model": {}}, ref)
    with pytest.raises(CheckpointError, match="jitkit import"):
        load_checkpoint(ref)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="expected a run folder"):
        load_checkpoint(tmp_path / "empty")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_checkpoint(run)
    # a file where the checkpoint folder should be written
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        _save(f, cfg, tiny_denoiser(cfg))


def test_state_is_never_unpickled(tmp_path):
    cfg = tiny_cfg()
    ck = _save(tmp_path / "last", cfg, tiny_denoiser(cfg))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"step": 1, "evil": Evil()}, ck / "state.pt")
    with pytest.raises(CheckpointError, match="only plain tensors"):
        load_checkpoint(ck)


def test_mismatch_names_both_configs_and_tensor(tmp_path):
    cfg = tiny_cfg()
    _save(tmp_path / "last", cfg, tiny_denoiser(cfg))
    other = tiny_cfg(img_size=16)
    with pytest.raises(CheckpointMismatchError) as ei:
        load_denoiser(tmp_path / "last", model_cfg=other.model)
    msg = str(ei.value)
    assert "net.pos_embed" in msg and "[1, 4, 32]" in msg and "[1, 16, 32]" in msg
    assert "img_size" in msg and "checkpoint" in msg and "requested" in msg
    deeper = tiny_cfg(depth=3)
    with pytest.raises(CheckpointMismatchError, match="net.blocks.2"):
        check_state_dict(tiny_denoiser(deeper), tiny_denoiser(cfg).state_dict(), cfg, deeper)


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = tiny_cfg()
    den = tiny_denoiser(cfg)
    _save(tmp_path / "last", cfg, den, step=1)
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFullError, match="out of disk space.*previous checkpoint was kept"):
        _save(tmp_path / "last", cfg, tiny_denoiser(cfg, 5), step=2)
    ck = load_checkpoint(tmp_path / "last")
    assert ck.step == 1 and torch.equal(ck.model["net.pos_embed"], den.state_dict()["net.pos_embed"])
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # the temp folder was removed
