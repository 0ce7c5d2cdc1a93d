"""jitkit.checkpoint.reference (``jitkit import``): reference checkpoints (pickled dict with model, EMAs and an
argparse Namespace) → run folders."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from jitkit.checkpoint import load_denoiser
from jitkit.checkpoint.reference import ReferenceCheckpointError, config_from_args, import_reference
from jitkit.cli import main
from jitkit.diffusion.generate import sample_denoiser


def _golden(shared_dir):
    g = load_file(str(shared_dir / "golden" / "jit_small.safetensors"))
    info = json.loads((shared_dir / "golden" / "jit_small.json").read_text())
    state = {k[len("state.") :]: v for k, v in g.items() if k.startswith("state.")}
    return g, info, state


def _args(info, **kw):
    mc, sc = info["model_config"], info["sampling"]
    base = dict(
        model="JiT-T/4",  # the reference names only B/L/H; a small fork adds its sizes to args
        img_size=mc["input_size"],
        class_num=mc["num_classes"],
        bottleneck_dim=mc["bottleneck_dim"],
        attn_dropout=0.0,
        proj_dropout=0.0,
        P_mean=-0.8,
        P_std=0.8,
        t_eps=sc["t_eps"],
        noise_scale=sc["noise_scale"],
        label_drop_prob=0.1,
        sampling_method="heun",
        num_sampling_steps=sc["steps"],
        cfg=sc["cfg"],
        interval_min=sc["interval"][0],
        interval_max=sc["interval"][1],
        ema_decay1=0.9999,
        ema_decay2=0.9996,
        blr=5e-5,
        epochs=600,
        data_path="./data/imagenet",
        output_dir="./output_dir",
        device="cuda",
        gpu=0,
        distributed=True,
        dist_backend="nccl",
    )
    base.update(kw)
    return argparse.Namespace(**base)


def _perturbed(sd, scale, params_only=False):
    g = torch.Generator().manual_seed(int(scale * 1000))
    out = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()}
    return out


def _write_reference(path, state, args, ema1, ema2, **extra):
    torch.save(
        {"model": state, "model_ema1": ema1, "model_ema2": ema2, "args": args, "epoch": 41, **extra}, path
    )


def test_import_reproduces_golden_network_and_sampler(shared_dir, tmp_path):
    g, info, state = _golden(shared_dir)
    ema2 = _perturbed(state, 0.01)
    opt = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2)}},
        "param_groups": [{"lr": 1e-4}],
    }
    _write_reference(tmp_path / "checkpoint-last.pth", state, _args(info), state, ema2, optimizer=opt)
    assert main(["import", str(tmp_path / "checkpoint-last.pth"), "--out", str(tmp_path / "run")]) == 0

    den, cfg, classes = load_denoiser(tmp_path / "run", ema="1")
    assert cfg.model.img_size == 32 and cfg.model.bottleneck_dim == 16 and cfg.model.num_classes == 10
    assert cfg.sampler.steps == 5 and cfg.sampler.cfg == 2.5 and tuple(cfg.sampler.interval) == (0.1, 1.0)
    assert classes == [str(i) for i in range(10)]
    with torch.no_grad():
        out = den.net(g["input.x"], g["input.t"], g["input.y"])
    torch.testing.assert_close(out, g["output.net"], atol=2e-5, rtol=1e-4)
    # the imported sampler settings, driven from the Denoiser, reproduce the reference's Heun samples
    z = sample_denoiser(den, g["sample.z0"], g["sample.labels"], cfg.sampler)
    torch.testing.assert_close(z, g["sample.heun"], atol=1e-4, rtol=1e-4)
    meta = json.loads((tmp_path / "run" / "checkpoints" / "last" / "meta.json").read_text())
    assert meta["epoch"] == 42 and meta["reference_args"]["model"] == "JiT-T/4"


def test_each_weight_set_round_trips(shared_dir, tmp_path):
    g, info, state = _golden(shared_dir)
    ema1, ema2 = _perturbed(state, 0.02), _perturbed(state, 0.03)
    # the reference saves EMAs keyed by named_parameters; here drop one key to exercise the fill-in
    _write_reference(tmp_path / "c.pth", state, _args(info), ema1, ema2)
    import_reference(tmp_path / "c.pth", tmp_path / "run")
    x, t, y = g["input.x"], g["input.t"], g["input.y"]
    outs = {}
    for which, sd in (("1", ema1), ("2", ema2), ("none", state)):
        den, _, _ = load_denoiser(tmp_path / "run", ema=which)
        got = den.state_dict()
        assert all(torch.equal(got[k], sd[k]) for k in sd)
        with torch.no_grad():
            outs[which] = den.net(x, t, y)
    assert not torch.allclose(outs["1"], outs["2"])


def test_pickled_code_is_refused(shared_dir, tmp_path):
    _, info, state = _golden(shared_dir)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"model": state, "args": _args(info), "hook": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(ReferenceCheckpointError, match=r"refusing.*type io\.open"):
        import_reference(tmp_path / "evil.pth", tmp_path / "run")
    assert not marker.exists() and not (tmp_path / "run").exists()
    # a Path inside args is a class too: refused, and the CLI says so
    torch.save({"model": state, "args": _args(info, output_dir=tmp_path)}, tmp_path / "path.pth")
    assert main(["import", str(tmp_path / "path.pth"), "--out", str(tmp_path / "run")]) == 2


def test_args_that_disagree_with_tensors_are_explained(shared_dir, tmp_path):
    _, info, state = _golden(shared_dir)
    _write_reference(tmp_path / "c.pth", state, _args(info, img_size=64), state, state)
    with pytest.raises(ReferenceCheckpointError) as e:
        import_reference(tmp_path / "c.pth", tmp_path / "run")
    msg = str(e.value)
    assert "JiT-T/4 at 64px" in msg and "width 96, 64 patches" in msg
    assert "net.pos_embed" in msg and "[1, 64, 96]" in msg and "[1, 256, 96]" in msg
    _write_reference(tmp_path / "d.pth", state, _args(info, model="JiT-Q/9"), state, state)
    with pytest.raises(ReferenceCheckpointError, match="registered"):
        import_reference(tmp_path / "d.pth", tmp_path / "run")
    torch.save({"weights": state}, tmp_path / "e.pth")
    with pytest.raises(ReferenceCheckpointError, match="missing \\['model', 'args'\\]"):
        import_reference(tmp_path / "e.pth", tmp_path / "run")


def test_config_from_reference_defaults():
    cfg = config_from_args(
        argparse.Namespace(
            model="JiT-H/16",
            img_size=256,
            class_num=1000,
            proj_dropout=0.2,
            cfg=2.2,
            interval_min=0.1,
            interval_max=1.0,
        )
    )
    assert cfg.model.hidden_size == 1280 and cfg.model.depth == 32 and cfg.model.proj_dropout == 0.2
    assert cfg.sampler.cfg == 2.2 and cfg.sampler.steps == 50 and cfg.diffusion.t_eps == 0.05


def test_output_folder_errors_name_parameters_and_the_cli_names_flags(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(FileExistsError, match=r"not empty.*overwrite=True") as e:
        import_reference(tmp_path / "any.pth", tmp_path / "full")
    assert "--" not in str(e.value)
    with pytest.raises(NotADirectoryError, match="out expects a folder"):
        import_reference(tmp_path / "any.pth", tmp_path / "afile")
    assert main(["import", str(tmp_path / "any.pth"), "--out", str(tmp_path / "full")]) == 2
    assert "--out" in (err := capsys.readouterr().err) and "--overwrite" in err
    assert main(["import", str(tmp_path / "any.pth"), "--out", str(tmp_path / "afile")]) == 2
    assert "--out expects a folder" in capsys.readouterr().err


def test_files_that_are_not_checkpoints_say_what_they_are(shared_dir, tmp_path):
    _, info, state = _golden(shared_dir)
    _write_reference(tmp_path / "ok.pth", state, _args(info), state, state)
    whole = (tmp_path / "ok.pth").read_bytes()
    cases = {
        "empty.pth": (b"", r"is empty \(0 bytes\)"),
        "text.pth": (b"hello, not a checkpoint", "not a PyTorch checkpoint.*starting with b'hello"),
        "cut.pth": (whole[: len(whole) // 2], "damaged zip archive.*truncated"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ReferenceCheckpointError, match=needle):
            import_reference(tmp_path / name, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_refused_pickle_names_the_object_it_would_have_called(shared_dir, tmp_path):
    import os

    _, info, state = _golden(shared_dir)

    class Shell:
        def __reduce__(self):
            return (os.system, ("echo never",))

    torch.save({"model": state, "args": _args(info), "x": Shell()}, tmp_path / "shell.pth")
    with pytest.raises(ReferenceCheckpointError, match=r"pickled object of type (posix|nt)\.system"):
        import_reference(tmp_path / "shell.pth", tmp_path / "run")
