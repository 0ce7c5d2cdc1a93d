"""jitkit.checkpoint.diffusers (``jitkit export --format diffusers``, ``jitkit import DIR``): run folders ↔
diffusers-style folders named as the JiT-diffusers port names them."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from jitkit.checkpoint import load_checkpoint, load_denoiser, save_checkpoint
from jitkit.checkpoint.diffusers import (
    TRANSFORMER_CONFIG_KEYS,
    DiffusersFolderError,
    export_diffusers,
    import_diffusers,
)
from jitkit.checkpoint.reference import import_reference
from jitkit.cli import main
from jitkit.config import RunConfig
from jitkit.diffusion.generate import sample_denoiser


def _port_key(jitkit_key: str) -> str:
    """The port's name of a jitkit key, written out here independently of the module under test."""
    k = jitkit_key.removeprefix("net.")
    k = k.replace("final_layer.norm_final.", "norm_final.")
    k = k.replace("final_layer.linear.", "linear_final.")
    k = k.replace("final_layer.adaLN_modulation.1.", "adaLN_modulation_final.")
    return k.replace(".adaLN_modulation.1.", ".adaLN_modulation.")


def _perturbed(sd, scale):
    g = torch.Generator().manual_seed(int(scale * 1000))
    return {k: v + scale * torch.randn(v.shape, generator=g) for k, v in sd.items()}


@pytest.fixture
def run(tmp_path, tiny):
    """A run folder of the tiny JiT with three distinct weight sets, class names and a non-default sampler."""
    mc = tiny.model_config()
    cfg = RunConfig.from_dict(
        {
            "model": mc.to_dict(),
            "diffusion": {"t_eps": 0.04, "noise_scale": 1.5},
            "sampler": {"method": "dpm++2m", "steps": 7, "cfg": 2.5, "interval": [0.1, 0.9]},
            "data": {"img_size": mc.img_size},
        }
    )
    sd = tiny.denoiser(mc).state_dict()
    weights = {"model": sd, "ema1": _perturbed(sd, 0.01), "ema2": _perturbed(sd, 0.02)}
    save_checkpoint(
        tmp_path / "run" / "checkpoints" / "last",
        config=cfg,
        classes=["cat", "dog", "owl"],
        meta={"step": 12},
        **weights,
    )
    return tmp_path / "run", cfg, weights


@pytest.mark.parametrize("ema", ["1", "2", "none"])
def test_run_export_import_round_trip_is_bit_exact(run, tmp_path, ema):
    src, cfg, weights = run
    which = {"1": "ema1", "2": "ema2", "none": "model"}[ema]
    out = export_diffusers(src, tmp_path / "hf", ema=ema)
    assert out == tmp_path / "hf"
    back = import_diffusers(out, tmp_path / "back")
    ck = load_checkpoint(back)
    assert ck.config.to_dict() == cfg.to_dict()
    assert ck.classes == ["cat", "dog", "owl"]
    want = weights[which]
    for got in (ck.model, ck.ema1, ck.ema2):  # the one weight set fills all three
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)


def test_folder_holds_the_documented_names(run, tmp_path):
    src, cfg, weights = run
    out = export_diffusers(src, tmp_path / "hf")
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
    ]
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "JiTPipeline"
    assert index["transformer"] == ["diffusers", "JiTTransformer2DModel"]
    assert index["scheduler"] == ["diffusers", "JiTScheduler"]
    assert index["id2label"] == {"0": "cat", "1": "dog", "2": "owl"}
    assert index["_jitkit"]["weights"] == "ema1" and index["_jitkit"]["step"] == 12

    tc = json.loads((out / "transformer" / "config.json").read_text())
    assert list(tc) == list(TRANSFORMER_CONFIG_KEYS)
    m = cfg.model
    assert tc["_class_name"] == "JiTTransformer2DModel"
    assert (tc["sample_size"], tc["patch_size"], tc["hidden_size"], tc["num_layers"]) == (8, 4, 32, 2)
    assert (tc["num_attention_heads"], tc["bottleneck_dim"], tc["num_classes"]) == (2, 8, 3)
    assert (tc["in_context_len"], tc["in_context_start"]) == (m.in_context_len, m.in_context_start)
    assert tc["norm_eps"] == 1e-6 and tc["model_type"] is None and tc["num_class_embeds"] is None

    sc = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sc["_class_name"] == "JiTScheduler"
    assert (sc["t_eps"], sc["noise_scale"], sc["solver"], sc["sampler"]) == (0.04, 1.5, "heun", "dpm++2m")
    assert (sc["num_inference_steps"], sc["guidance_scale"], sc["guidance_interval"]) == (7, 2.5, [0.1, 0.9])

    tensors = load_file(str(out / "transformer" / "diffusion_pytorch_model.safetensors"))
    assert set(tensors) == {_port_key(k) for k in weights["ema1"]}
    for k, v in weights["ema1"].items():
        t = tensors[_port_key(k)]
        assert t.dtype == torch.float32 and t.is_contiguous() and torch.equal(t, v)
    assert "blocks.1.adaLN_modulation.weight" in tensors and "adaLN_modulation_final.bias" in tensors
    assert "linear_final.weight" in tensors and "norm_final.weight" in tensors


def _golden(shared_dir):
    g = load_file(str(shared_dir / "golden" / "jit_small.safetensors"))
    info = json.loads((shared_dir / "golden" / "jit_small.json").read_text())
    state = {k[len("state.") :]: v for k, v in g.items() if k.startswith("state.")}
    return g, info, state


def _check_golden(run_dir, g, steps=None):
    den, cfg, _ = load_denoiser(run_dir, ema="1")
    with torch.no_grad():
        out = den.net(g["input.x"], g["input.t"], g["input.y"])
    torch.testing.assert_close(out, g["output.net"], atol=2e-5, rtol=1e-4)
    scfg = cfg.sampler if steps is None else cfg.sampler.replace(**steps)
    z = sample_denoiser(den, g["sample.z0"], g["sample.labels"], scfg)
    torch.testing.assert_close(z, g["sample.heun"], atol=1e-4, rtol=1e-4)


def test_golden_reference_weights_survive_export_and_import(shared_dir, tmp_path):
    g, info, state = _golden(shared_dir)
    mc, sc = info["model_config"], info["sampling"]
    args = argparse.Namespace(
        model="JiT-T/4",
        img_size=mc["input_size"],
        class_num=mc["num_classes"],
        bottleneck_dim=mc["bottleneck_dim"],
        t_eps=sc["t_eps"],
        noise_scale=sc["noise_scale"],
        sampling_method="heun",
        num_sampling_steps=sc["steps"],
        cfg=sc["cfg"],
        interval_min=sc["interval"][0],
        interval_max=sc["interval"][1],
    )
    ema = {"model": state, "model_ema1": state, "model_ema2": state, "args": args}
    torch.save(ema, tmp_path / "checkpoint-last.pth")
    import_reference(tmp_path / "checkpoint-last.pth", tmp_path / "ref")
    export_diffusers(tmp_path / "ref", tmp_path / "hf")
    import_diffusers(tmp_path / "hf", tmp_path / "back")
    _check_golden(tmp_path / "back", g)


@pytest.mark.parametrize("layout", ["native", "wrapper"])
def test_a_port_converter_folder_imports_without_jitkit_files(shared_dir, tmp_path, layout):
    """The port's converter writes config.json + weights into the output folder itself (save_pretrained), with
    ``model_type`` and its own keys only; the older wrapper layout keys every tensor ``transformer.<official>``."""
    g, info, state = _golden(shared_dir)
    mc = info["model_config"]
    d = tmp_path / "port"
    d.mkdir()
    config = {
        "_class_name": "JiTTransformer2DModel",
        "_diffusers_version": "0.31.0",
        "sample_size": mc["input_size"],
        "patch_size": mc["patch_size"],
        "in_channels": 3,
        "hidden_size": mc["hidden_size"],
        "num_layers": mc["depth"],
        "num_attention_heads": mc["num_heads"],
        "mlp_ratio": 4.0,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "num_classes": mc["num_classes"],
        "bottleneck_dim": mc["bottleneck_dim"],
        "in_context_len": mc["in_context_len"],
        "in_context_start": mc["in_context_start"],
        "norm_eps": 1e-6,
        "model_type": None,
        "num_class_embeds": None,
    }
    if layout == "native":
        tensors = {_port_key(k): v for k, v in state.items()}
    else:
        tensors = {"transformer." + k.removeprefix("net."): v for k, v in state.items()}
    (d / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(d / "diffusion_pytorch_model.safetensors"))
    assert main(["import", str(d), "--out", str(tmp_path / "run")]) == 0
    cfg = load_checkpoint(tmp_path / "run").config
    assert cfg.model.name == "JiT-custom" and cfg.model.bottleneck_dim == mc["bottleneck_dim"]
    # no scheduler folder: the sampler is jitkit's default; the golden samples use the reference's settings
    sc = info["sampling"]
    _check_golden(tmp_path / "run", g, {"steps": sc["steps"], "cfg": sc["cfg"], "interval": sc["interval"]})


def test_config_that_disagrees_with_tensors_names_both_and_writes_nothing(run, tmp_path):
    src, _, _ = run
    hf = export_diffusers(src, tmp_path / "hf")
    p = hf / "transformer" / "config.json"
    tc = json.loads(p.read_text())
    tc["hidden_size"] = 64
    tc["num_attention_heads"] = 4
    p.write_text(json.dumps(tc))
    with pytest.raises(DiffusersFolderError) as e:
        import_diffusers(hf, tmp_path / "back")
    msg = str(e.value)
    assert "hidden_size 64" in msg  # what the config says
    assert "width 32" in msg  # what the tensors say
    assert not (tmp_path / "back").exists()


def test_pickled_weights_are_refused_unread(run, tmp_path, monkeypatch, capsys):
    src, _, _ = run
    hf = export_diffusers(src, tmp_path / "hf")
    st = hf / "transformer" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(st)), hf / "transformer" / "diffusion_pytorch_model.bin")
    st.unlink()

    def no_unpickling(*a, **kw):
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(DiffusersFolderError, match=r"refusing to read .*diffusion_pytorch_model\.bin"):
        import_diffusers(hf, tmp_path / "back")
    assert not (tmp_path / "back").exists()
    assert main(["import", str(hf), "--out", str(tmp_path / "back")]) == 2
    err = capsys.readouterr().err
    assert "only safetensors" in err and len(err.strip().splitlines()) == 1


def test_cli_export_and_import_round_trip(run, tmp_path, capsys):
    src, cfg, weights = run
    hf, back = tmp_path / "hf", tmp_path / "back"
    assert main(["export", str(src), "--format", "diffusers", "--out", str(hf), "--ema", "2"]) == 0
    assert f"wrote {hf}" in capsys.readouterr().out
    assert main(["export", str(src), "--out", str(hf)]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err
    assert main(["export", str(src), "--out", str(hf), "--overwrite"]) == 0  # now EMA 1
    capsys.readouterr()
    assert main(["import", str(hf), "--out", str(back)]) == 0
    assert f"wrote {back}" in capsys.readouterr().out
    ck = load_checkpoint(back)
    assert ck.config.to_dict() == cfg.to_dict()
    assert all(torch.equal(ck.ema1[k], weights["ema1"][k]) for k in weights["ema1"])
    # a folder that is neither: the .pth path keeps its own message
    assert main(["export", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
