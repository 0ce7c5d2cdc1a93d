"""Diffusers-style folders: export a run's weights for ``JiTTransformer2DModel`` and import such folders back.

The names follow the community port Bili-Sakura/JiT-diffusers (``JiTPipeline``, ``JiTTransformer2DModel``,
``JiTScheduler``; its native model and ``remap_legacy_state_dict``). jitkit reads and writes the files
itself: the ``diffusers`` package is not needed. Layout (docs/ecosystem.md)::

    OUT/model_index.json                    pipeline class, components, ``id2label`` (the class names, as
                                            DiTPipeline keeps them) and ``_jitkit`` (the full run config)
    OUT/transformer/config.json             the port's config keys (TRANSFORMER_CONFIG_KEYS)
    OUT/transformer/diffusion_pytorch_model.safetensors   float32 tensors under the port's names
    OUT/scheduler/scheduler_config.json     t_eps, the flow's noise scale and P_mean/P_std, the sampler

Tensor names: a jitkit Denoiser key ``net.<path>`` becomes ``<path>`` with three renames (``to_diffusers_key``):
``blocks.i.adaLN_modulation.1.`` → ``blocks.i.adaLN_modulation.``, ``final_layer.norm_final.`` →
``norm_final.``, ``final_layer.linear.`` → ``linear_final.``, ``final_layer.adaLN_modulation.1.`` →
``adaLN_modulation_final.``. The port's older wrapper layout (every key ``transformer.<official path>``) is read
too. Keys starting with ``_`` are private to diffusers' config loader, which ignores them.

Weight files are only ever safetensors (also sharded with an index); ``.bin`` / ``.pt`` pickles are refused.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from jitkit.checkpoint.load import _WEIGHTS_OF, check_state_dict, load_checkpoint
from jitkit.checkpoint.reference import (
    _read_classes,
    check_new_run_folder,
    shapes_summary,
    write_imported_run,
)
from jitkit.checkpoint.store import _fsync_path, _tmp_sibling
from jitkit.config import MODEL_NAMES, DiffusionConfig, ModelConfig, RunConfig, model_config
from jitkit.config.presets import ARCHITECTURE_FIELDS
from jitkit.config.schema import SAMPLERS
from jitkit.fileio import atomic_write_bytes, atomic_write_with

__all__ = [
    "CONFIG_KEYS",
    "DiffusersFolderError",
    "export_diffusers",
    "from_diffusers_key",
    "import_diffusers",
    "is_diffusers_folder",
    "model_config_from_transformer",
    "to_diffusers_key",
    "transformer_config",
]

LIBRARY = "diffusers"
PIPELINE_CLASS = "JiTPipeline"
TRANSFORMER_CLASS = "JiTTransformer2DModel"
SCHEDULER_CLASS = "JiTScheduler"
DIFFUSERS_VERSION = "0.31.0"  # the version the port's model_index example names
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
WEIGHTS_INDEX = "diffusion_pytorch_model.safetensors.index.json"
CUSTOM_NAME = "JiT-custom"  # the name of an imported architecture jitkit does not register
NORM_EPS = 1e-6  # jitkit's RMSNorm eps (JIT_SPEC); the port's ``norm_eps``

# transformer/config.json key ↔ ModelConfig field (the port's __init__ arguments)
CONFIG_KEYS: dict[str, str] = {
    "sample_size": "img_size",
    "patch_size": "patch_size",
    "in_channels": "in_channels",
    "hidden_size": "hidden_size",
    "num_layers": "depth",
    "num_attention_heads": "num_heads",
    "mlp_ratio": "mlp_ratio",
    "attention_dropout": "attn_dropout",
    "dropout": "proj_dropout",
    "num_classes": "num_classes",
    "bottleneck_dim": "bottleneck_dim",
    "in_context_len": "in_context_len",
    "in_context_start": "in_context_start",
}
# the port's other keys: norm_eps (always 1e-6 here), model_type (a preset name that overrides the explicit
# keys in the port; written as null so the explicit keys rule), num_class_embeds (an alias of num_classes)
TRANSFORMER_CONFIG_KEYS = (
    "_class_name",
    "_diffusers_version",
    *CONFIG_KEYS,
    "norm_eps",
    "model_type",
    "num_class_embeds",
)
# aliases older port configs use
_ALIASES = {
    "image_size": "sample_size",
    "num_class_embeds": "num_classes",
    "attn_dropout": "attention_dropout",
    "proj_dropout": "dropout",
}

# (jitkit network path prefix, diffusers prefix); blocks.i.adaLN_modulation.1. is handled by the regexes
_RENAMES = (
    ("final_layer.norm_final.", "norm_final."),
    ("final_layer.linear.", "linear_final."),
    ("final_layer.adaLN_modulation.1.", "adaLN_modulation_final."),
)
_BLOCK_ADALN_JITKIT = re.compile(r"^(blocks\.\d+)\.adaLN_modulation\.1\.")
_BLOCK_ADALN_DIFFUSERS = re.compile(r"^(blocks\.\d+)\.adaLN_modulation\.(?=weight$|bias$)")
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class DiffusersFolderError(ValueError):
    """A folder that is not a usable diffusers-style JiT folder (what was expected and what was found)."""


# -- names ------------------------------------------------------------------------------------------------


def to_diffusers_key(key: str) -> str:
    """A jitkit Denoiser key (``net.blocks.0.adaLN_modulation.1.weight``) → the port's (``blocks.0.adaLN_modulation.weight``)."""
    if not key.startswith("net."):
        raise DiffusersFolderError(f"expected a Denoiser key starting with 'net.', found {key!r}")
    k = key[len("net.") :]
    for ours, theirs in _RENAMES:
        if k.startswith(ours):
            return theirs + k[len(ours) :]
    return _BLOCK_ADALN_JITKIT.sub(r"\1.adaLN_modulation.", k)


def from_diffusers_key(key: str) -> str:
    """The port's key → the jitkit Denoiser key (the inverse of :func:`to_diffusers_key`)."""
    for ours, theirs in _RENAMES:
        if key.startswith(theirs):
            return "net." + ours + key[len(theirs) :]
    return "net." + _BLOCK_ADALN_DIFFUSERS.sub(r"\1.adaLN_modulation.1.", key)


def _jitkit_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers state dict (native keys, or the older wrapper's ``transformer.<official path>``) → jitkit keys."""
    if sd and all(k.startswith("transformer.") for k in sd):  # the port's first (wrapper) layout
        return {"net." + k[len("transformer.") :]: v for k, v in sd.items()}
    return {from_diffusers_key(k): v for k, v in sd.items()}


# -- configs ----------------------------------------------------------------------------------------------


def transformer_config(mc: ModelConfig) -> dict[str, Any]:
    """``transformer/config.json`` of a ModelConfig (the port's keys; ``model_type`` null: explicit keys rule)."""
    d: dict[str, Any] = {"_class_name": TRANSFORMER_CLASS, "_diffusers_version": DIFFUSERS_VERSION}
    d.update({key: getattr(mc, field) for key, field in CONFIG_KEYS.items()})
    d.update({"norm_eps": NORM_EPS, "model_type": None, "num_class_embeds": None})
    return d


def _arch(mc: ModelConfig) -> dict[str, Any]:
    return {f: getattr(mc, f) for f in (*ARCHITECTURE_FIELDS, "in_channels", "mlp_ratio", "num_classes")}


def model_config_from_transformer(tc: dict[str, Any], hint: dict[str, Any] | None = None) -> ModelConfig:
    """The jitkit ModelConfig a ``transformer/config.json`` describes.

    Explicit keys rule; a ``model_type`` that jitkit registers (``JiT-B/16``) fills the keys that are missing;
    the rest take the port's defaults (which are JiT-B/16's). ``hint``: a jitkit model dict (from
    ``model_index.json``) whose name and non-architecture fields are kept when its architecture agrees.
    """
    tc = dict(tc)
    for alias, key in _ALIASES.items():
        if tc.get(alias) is not None:
            tc[key] = tc[alias]
    if tc.get("model_name") is not None and tc.get("model_type") is None:
        tc["model_type"] = tc["model_name"]
    eps = tc.get("norm_eps", NORM_EPS)
    if eps is not None and not math.isclose(float(eps), NORM_EPS, rel_tol=1e-9):
        raise DiffusersFolderError(
            f"transformer config: norm_eps is {eps}; jitkit's JiT uses RMSNorm eps {NORM_EPS}"
        )
    canon = {n.lower(): n for n in MODEL_NAMES}
    model_type = tc.get("model_type")
    base = ModelConfig()
    if isinstance(model_type, str) and model_type.lower() in canon:
        base = model_config(canon[model_type.lower()])
    kw = {}
    for key, field in CONFIG_KEYS.items():
        v = tc.get(key)
        if v is None:
            continue
        want = type(getattr(base, field))
        if want is int and (isinstance(v, bool) or float(v) != int(v)):
            raise DiffusersFolderError(f"transformer config: {key} should be an integer, found {v!r}")
        kw[field] = want(v)
    mc = base.replace(**kw)
    if hint is not None:
        try:
            hinted = ModelConfig.from_dict(hint)
        except Exception:  # a damaged hint: the transformer config alone decides
            hinted = None
        if hinted is not None and _arch(hinted) == _arch(mc):
            return hinted.replace(attn_dropout=mc.attn_dropout, proj_dropout=mc.proj_dropout)
    # the registered name of this architecture, if any (a port folder of JiT-B/16 imports as JiT-B/16)
    for name in MODEL_NAMES:
        try:
            cand = model_config(name, img_size=mc.img_size, num_classes=mc.num_classes)
        except ValueError:  # this size's patch does not divide the image
            continue
        if _arch(cand) == _arch(mc):
            return mc.replace(name=name)
    return mc.replace(name=CUSTOM_NAME)


def _describe(mc: ModelConfig) -> str:
    return (
        f"{mc.name}: sample_size {mc.img_size}, patch_size {mc.patch_size}, hidden_size {mc.hidden_size}, "
        f"num_layers {mc.depth}, num_attention_heads {mc.num_heads}, bottleneck_dim {mc.bottleneck_dim}, "
        f"in_context_len {mc.in_context_len}, in_context_start {mc.in_context_start}, num_classes {mc.num_classes}"
    )


def scheduler_config(cfg: RunConfig) -> dict[str, Any]:
    """``scheduler/scheduler_config.json``: the port's JiTScheduler keys (num_train_timesteps, t_eps, solver) plus
    what jitkit's sampler needs (the port's loader ignores keys it does not know)."""
    s, d = cfg.sampler, cfg.diffusion
    return {
        "_class_name": SCHEDULER_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_train_timesteps": 1000,
        "t_eps": d.t_eps,
        "solver": s.method if s.method in ("heun", "euler") else "heun",  # the port knows these two
        "prediction_type": {"x": "sample", "eps": "epsilon", "v": "v_prediction"}.get(d.pred, d.pred),
        "noise_scale": d.noise_scale,
        "P_mean": d.P_mean,
        "P_std": d.P_std,
        "sampler": s.method,
        "num_inference_steps": s.steps,
        "guidance_scale": s.cfg,
        "guidance_interval": list(s.interval),
        "time_grid": s.time_grid,
    }


def _run_config_from_scheduler(sc: dict[str, Any], mc: ModelConfig) -> RunConfig:
    """A RunConfig for a folder without jitkit's ``_jitkit`` block: the scheduler's keys over the defaults."""
    diffusion = {
        k: float(sc[k]) for k in ("t_eps", "noise_scale", "P_mean", "P_std") if sc.get(k) is not None
    }
    sampler: dict[str, Any] = {}
    method = sc.get("sampler") or sc.get("solver")
    if method in SAMPLERS:
        sampler["method"] = method
    if sc.get("num_inference_steps") is not None:
        sampler["steps"] = int(sc["num_inference_steps"])
    if sc.get("guidance_scale") is not None:
        sampler["cfg"] = float(sc["guidance_scale"])
    if sc.get("guidance_interval") is not None:
        sampler["interval"] = [float(x) for x in sc["guidance_interval"]]
    if sc.get("time_grid") is not None:
        sampler["time_grid"] = str(sc["time_grid"])
    return RunConfig.from_dict(
        {"model": mc.to_dict(), "diffusion": diffusion, "sampler": sampler, "data": {"img_size": mc.img_size}}
    )


# -- export -----------------------------------------------------------------------------------------------


def _json_bytes(d: Any) -> bytes:
    return (json.dumps(d, indent=2) + "\n").encode()


def export_diffusers(
    run_or_ckpt: str | Path, out_dir: str | Path, ema: str = "1", *, overwrite: bool = False
) -> Path:
    """Write one weight set (``ema`` "1", "2" or "none" for the raw model) of a run or checkpoint as a
    diffusers-style folder ``out_dir`` and return its path.

    The folder is built in a temporary sibling and renamed into place, so ``out_dir`` is either absent or
    complete; a non-empty ``out_dir`` is replaced only with ``overwrite``.
    """
    from safetensors.torch import save

    from jitkit import __version__
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    which = _WEIGHTS_OF.get(str(ema).lower())
    if which is None:
        raise ValueError(f"ema must be '1', '2' or 'none', found {ema!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"out_dir must be a folder (new or empty), found a file: {out}")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"out_dir {out} is not empty; choose a new folder or pass overwrite=True")
    ck = load_checkpoint(run_or_ckpt)
    sd = getattr(ck, which)
    if sd is None:
        have = [k for k in ("ema1", "ema2") if getattr(ck, k) is not None] + ["none"]
        raise ValueError(
            f"checkpoint {ck.path} has no {which} weights; ema choices available: {', '.join(have)}"
        )
    cfg = ck.config
    with torch.device("meta"):
        den = Denoiser(build_model(cfg.model, device="meta"), cfg.diffusion, cfg.model.num_classes)
    check_state_dict(den, sd)
    tensors = {to_diffusers_key(k): v.detach().to("cpu", torch.float32).contiguous() for k, v in sd.items()}
    classes = (
        list(ck.classes)
        if len(ck.classes) == cfg.model.num_classes
        else [str(i) for i in range(cfg.model.num_classes)]
    )
    index = {
        "_class_name": PIPELINE_CLASS,
        "_diffusers_version": DIFFUSERS_VERSION,
        "scheduler": [LIBRARY, SCHEDULER_CLASS],
        "transformer": [LIBRARY, TRANSFORMER_CLASS],
        "id2label": {str(i): name for i, name in enumerate(classes)},
        "_jitkit": {
            "jitkit_version": __version__,
            "weights": which,
            "source": str(ck.path.resolve()),
            "step": ck.step,
            "config": cfg.to_dict(),
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out)
    try:
        tmp.mkdir()
        atomic_write_bytes(tmp / "model_index.json", _json_bytes(index))
        atomic_write_bytes(tmp / "transformer" / "config.json", _json_bytes(transformer_config(cfg.model)))
        # diffusers' save_pretrained writes this metadata
        blob = save(tensors, metadata={"format": "pt"})
        atomic_write_with(tmp / "transformer" / WEIGHTS_NAME, lambda f: f.write(blob))
        atomic_write_bytes(tmp / "scheduler" / "scheduler_config.json", _json_bytes(scheduler_config(cfg)))
        for d in (tmp / "transformer", tmp / "scheduler", tmp):
            _fsync_path(d, directory=True)
        backup = None
        if out.exists():
            backup = out.parent / f".old-{out.name}-{uuid.uuid4().hex[:8]}"
            os.replace(out, backup)
        os.replace(tmp, out)
        _fsync_path(out.parent, directory=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
    return out


# -- import -----------------------------------------------------------------------------------------------


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a diffusers-style folder: a pipeline (``model_index.json`` or
    ``transformer/config.json``) or a model folder (``config.json`` beside ``diffusion_pytorch_model.*``)."""
    p = Path(path)
    if not p.is_dir():
        return False
    if (p / "model_index.json").is_file() or (p / "transformer" / "config.json").is_file():
        return True
    return (p / "config.json").is_file() and any(p.glob("diffusion_pytorch_model*"))


def _read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DiffusersFolderError(f"cannot read {what} {path}: {e}; expected a JSON object") from e
    if not isinstance(d, dict):
        raise DiffusersFolderError(f"{what} {path}: expected a JSON object, found {type(d).__name__}")
    return d


def _locate(path: Path) -> tuple[dict[str, Any], Path, Path | None]:
    """(model_index or {}, the transformer folder, the scheduler folder or None)."""
    if not path.exists():
        raise FileNotFoundError(f"diffusers folder {path} does not exist")
    if not path.is_dir():
        raise DiffusersFolderError(f"{path} is a file; expected a diffusers folder (with model_index.json)")
    index: dict[str, Any] = {}
    if (path / "model_index.json").is_file():
        index = _read_json(path / "model_index.json", "model_index")
        cls = index.get("_class_name")
        cls = cls[-1] if isinstance(cls, list) and cls else cls
        if cls is not None and "jit" not in str(cls).lower():
            raise DiffusersFolderError(
                f"{path}: model_index.json names pipeline {cls!r}; expected {PIPELINE_CLASS}"
            )
        name = next(
            (
                k
                for k, v in index.items()
                if isinstance(v, list) and len(v) == 2 and v[1] == TRANSFORMER_CLASS
            ),
            "transformer",
        )
        tdir = path / name
    elif (path / "transformer" / "config.json").is_file():
        tdir = path / "transformer"
    else:
        tdir = path  # a model folder, as the port's converter writes it (save_pretrained into the out dir)
    if not (tdir / "config.json").is_file():
        raise DiffusersFolderError(
            f"{path}: expected the transformer's config at {tdir / 'config.json'}, found "
            f"{', '.join(sorted(x.name for x in tdir.iterdir())) if tdir.is_dir() else 'no such folder'}"
        )
    sdir = path / "scheduler" if (path / "scheduler" / "scheduler_config.json").is_file() else None
    return index, tdir, sdir


def _load_tensors(tdir: Path) -> dict[str, torch.Tensor]:
    """The transformer's tensors from safetensors (one file or shards with an index); pickles are refused."""
    from safetensors.torch import load_file

    files: list[Path]
    if (tdir / WEIGHTS_NAME).is_file():
        files = [tdir / WEIGHTS_NAME]
    elif (tdir / WEIGHTS_INDEX).is_file():
        wm = _read_json(tdir / WEIGHTS_INDEX, "weights index").get("weight_map")
        if not isinstance(wm, dict):
            raise DiffusersFolderError(f"{tdir / WEIGHTS_INDEX}: expected a 'weight_map' object")
        files = [tdir / Path(str(f)).name for f in sorted(set(wm.values()))]
    else:
        pickles = sorted(f.name for f in tdir.iterdir() if f.suffix in _PICKLE_SUFFIXES)
        if pickles:
            raise DiffusersFolderError(
                f"refusing to read {tdir / pickles[0]}: a pickled weight file; jitkit reads only safetensors "
                f"(expected {tdir / WEIGHTS_NAME}). Re-save it with save_pretrained(..., safe_serialization=True)"
            )
        raise DiffusersFolderError(
            f"{tdir}: expected weights {WEIGHTS_NAME}, found {', '.join(sorted(f.name for f in tdir.iterdir()))}"
        )
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix != ".safetensors":
            raise DiffusersFolderError(f"refusing to read {f}: jitkit reads only .safetensors weight files")
        try:
            sd.update(load_file(str(f), device="cpu"))
        except FileNotFoundError:
            raise
        except Exception as e:  # safetensors raises its own error types
            raise DiffusersFolderError(f"cannot read weights {f}: {e} (damaged, or not safetensors)") from e
    return {k: v.to(torch.float32).contiguous() for k, v in sd.items()}


def import_diffusers(
    src: str | Path, out_run: str | Path, *, classes: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Convert a diffusers-style JiT folder (jitkit's export or the port's converter output) into a run folder.

    The ModelConfig comes from ``transformer/config.json`` and is checked against the tensor shapes before
    anything is written (a disagreement names both). The one weight set becomes the run's model, EMA 1 and
    EMA 2, so that every ``--ema`` choice samples it. Class names: ``classes`` (a file), else ``id2label``.
    """
    from jitkit.diffusion.flow import Denoiser
    from jitkit.models.registry import build_model

    src = Path(src).expanduser()
    out = check_new_run_folder(out_run, overwrite)
    index, tdir, sdir = _locate(src)
    tc = _read_json(tdir / "config.json", "transformer config")
    cls = tc.get("_class_name")
    if cls is not None and cls != TRANSFORMER_CLASS:
        raise DiffusersFolderError(
            f"{tdir / 'config.json'}: _class_name is {cls!r}; expected {TRANSFORMER_CLASS}"
        )
    jk = index.get("_jitkit") if isinstance(index.get("_jitkit"), dict) else {}
    hint = jk.get("config", {}).get("model") if isinstance(jk.get("config"), dict) else None
    try:
        mc = model_config_from_transformer(tc, hint)
    except (TypeError, ValueError) as e:
        raise DiffusersFolderError(f"{tdir / 'config.json'}: {e}") from e
    sd = _jitkit_state_dict(_load_tensors(tdir))
    with torch.device("meta"):
        den = Denoiser(build_model(mc, device="meta"), DiffusionConfig(), mc.num_classes)
    try:
        check_state_dict(den, sd)
    except ValueError as e:
        raise DiffusersFolderError(
            f"{tdir / 'config.json'} describes {_describe(mc)}; but the tensors of {tdir} say: "
            f"{shapes_summary(sd)}. {e}"
        ) from e
    if isinstance(jk.get("config"), dict):
        cfg = RunConfig.from_dict({**jk["config"], "model": mc.to_dict()}, strict=False)
    else:
        sc = _read_json(sdir / "scheduler_config.json", "scheduler config") if sdir else {}
        cfg = _run_config_from_scheduler(sc, mc)
    if classes is not None:
        names = _read_classes(classes, mc.num_classes)
    else:
        id2label = index.get("id2label")
        names = [str(i) for i in range(mc.num_classes)]
        if isinstance(id2label, dict):
            try:
                got = {int(k): str(v) for k, v in id2label.items()}
            except ValueError as e:
                raise DiffusersFolderError(f"{src}: id2label keys should be class indices, found {e}") from e
            if sorted(got) != list(range(mc.num_classes)):
                raise DiffusersFolderError(
                    f"{src}: id2label has {len(got)} entries; expected indices 0 … {mc.num_classes - 1}"
                )
            names = [got[i] for i in range(mc.num_classes)]
    meta = {
        "step": 0,
        "epoch": 0,
        "imported_from": str(src.resolve()),
        "diffusers": {"weights": jk.get("weights"), "source_step": jk.get("step"), "transformer_config": tc},
    }
    return write_imported_run(out, cfg, names, sd, ema1=sd, ema2=sd, meta=meta)
