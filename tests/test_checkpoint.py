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
    link_checkpoint,
    load_checkpoint,
    load_denoiser,
    prune_checkpoints,
    save_checkpoint,
    step_dir_name,
)
from jitkit.config import RunConfig


@pytest.fixture()
def run_cfg(tiny):
    """A RunConfig around the tiny model (8 px, 3 classes), with model fields changed by keyword."""
    return lambda **kw: RunConfig(model=tiny.model_config(**kw))


@pytest.fixture()
def make_den(tiny):
    """The tiny Denoiser of a RunConfig, with random weights from ``seed``."""
    return lambda cfg, seed=0: tiny.denoiser(cfg.model, seed=seed)


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


def test_round_trip_and_layout(tmp_path, run_cfg, make_den):
    cfg = run_cfg()
    den = make_den(cfg)
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


def test_replacing_last_keeps_only_new_and_latest_wins(tmp_path, run_cfg, make_den):
    cfg = run_cfg()
    root = tmp_path / "checkpoints"
    _save(root / "last", cfg, make_den(cfg, 0), step=1)
    _save(root / "last", cfg, make_den(cfg, 1), step=2)
    assert [p.name for p in root.iterdir()] == ["last"]  # no temp or backup folders left
    assert load_checkpoint(root).step == 2
    _save(root / "step-000005", cfg, make_den(cfg, 2), step=5)
    assert latest_checkpoint(tmp_path) == root / "step-000005"


def test_backup_is_found_when_last_is_missing(tmp_path, run_cfg, make_den):
    """A kill between 'rename last → backup' and 'rename temp → last' leaves only the backup."""
    cfg = run_cfg()
    root = tmp_path / "checkpoints"
    _save(root / "last", cfg, make_den(cfg), step=3)
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


def test_file_vs_folder_errors(tmp_path, run_cfg, make_den):
    cfg = run_cfg()
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
        _save(f, cfg, make_den(cfg))


def test_state_is_never_unpickled(tmp_path, run_cfg, make_den):
    cfg = run_cfg()
    ck = _save(tmp_path / "last", cfg, make_den(cfg))

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"step": 1, "evil": Evil()}, ck / "state.pt")
    with pytest.raises(CheckpointError, match="only plain tensors"):
        load_checkpoint(ck)


def test_mismatch_names_both_configs_and_tensor(tmp_path, run_cfg, make_den):
    cfg = run_cfg()
    _save(tmp_path / "last", cfg, make_den(cfg))
    other = run_cfg(img_size=16)
    with pytest.raises(CheckpointMismatchError) as ei:
        load_denoiser(tmp_path / "last", model_cfg=other.model)
    msg = str(ei.value)
    assert "net.pos_embed" in msg and "[1, 4, 32]" in msg and "[1, 16, 32]" in msg
    assert "img_size" in msg and "checkpoint" in msg and "requested" in msg
    # the config table marks exactly the field that differs
    marked = [line.split()[0] for line in msg.splitlines() if line.endswith("<-- differs")]
    assert marked == ["img_size"]
    deeper = run_cfg(depth=3)
    with pytest.raises(CheckpointMismatchError, match="net.blocks.2"):
        check_state_dict(make_den(deeper), make_den(cfg).state_dict(), cfg, deeper)


def test_disk_full_keeps_previous_checkpoint(tmp_path, monkeypatch, run_cfg, make_den):
    cfg = run_cfg()
    den = make_den(cfg)
    _save(tmp_path / "last", cfg, den, step=1)
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFullError, match="out of disk space.*previous checkpoint was kept"):
        _save(tmp_path / "last", cfg, make_den(cfg, 5), step=2)
    ck = load_checkpoint(tmp_path / "last")
    assert ck.step == 1 and torch.equal(ck.model["net.pos_embed"], den.state_dict()["net.pos_embed"])
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # the temp folder was removed


def test_disk_full_on_a_first_checkpoint_says_there_was_none_to_keep(
    tmp_path, monkeypatch, run_cfg, make_den
):
    import safetensors.torch

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(DiskFullError) as e:
        _save(tmp_path / "last", run_cfg(), make_den(run_cfg()), step=1)
    msg = str(e.value)
    assert "there was no previous checkpoint to keep" in msg and "was kept" not in msg
    assert f"MiB free on {tmp_path}" in msg and "free space on" not in msg


def test_numbered_copies_and_pruning(tmp_path, run_cfg, make_den):
    cfg = run_cfg()
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        last = _save(root / "last", cfg, make_den(cfg, step), step=step)
        link_checkpoint(last, root / step_dir_name(step))
    assert step_dir_name(3) == "step-000003"
    copy = load_checkpoint(root / "step-000002")
    assert copy.step == 2 and torch.equal(
        copy.model["net.pos_embed"], make_den(cfg, 2).state_dict()["net.pos_embed"]
    )
    removed = prune_checkpoints(root, keep=2)
    assert [p.name for p in removed] == ["step-000001"]
    assert sorted(p.name for p in root.iterdir()) == ["last", "step-000002", "step-000003"]
    assert prune_checkpoints(root, keep=0) == [] and len(find_checkpoints(root)) == 3


def test_lazy_checkpoint_reads_a_tensor_only_when_indexed(tmp_path, tiny, monkeypatch):
    """Resuming reads weights lazily (LazyWeights, a mmapped state.pt): the same tensors as an eager load,
    none read before it is asked for, shapes from the header only."""
    from safetensors import safe_open

    from jitkit.checkpoint.load import LazyWeights, shape_of

    cfg = RunConfig(model=tiny.model_config())
    den = tiny.denoiser(cfg.model)
    path = save_checkpoint(
        tmp_path / "ck", config=cfg, classes=["a", "b", "c"], model=den.state_dict(), state={"step": 3}
    )
    eager, lazy = load_checkpoint(path), load_checkpoint(path, lazy=True)
    assert isinstance(lazy.model, LazyWeights) and lazy.ema1 is None and lazy.state["step"] == 3
    reads: list[str] = []
    real = safe_open

    class Counting:
        def __init__(self, *a, **kw):
            self.f = real(*a, **kw)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, key):
            reads.append(key)
            return self.inner.get_tensor(key)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr("safetensors.safe_open", Counting)
    key = next(iter(eager.model))
    assert shape_of(lazy.model, key) == tuple(eager.model[key].shape) and reads == []
    check_state_dict(den, lazy.model)  # keys and shapes only
    assert reads == []
    assert torch.equal(lazy.model[key], eager.model[key]) and reads == [key]
    assert sorted(lazy.model) == sorted(eager.model) and len(lazy.model) == len(eager.model)
