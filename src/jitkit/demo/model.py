"""The demo's built-in model: the small shapes model (preset ``shapes``: a small JiT on 16×16 coloured
shapes, 16 classes), trained once and cached. A run the user names is loaded by the CLI with
``jitkit.checkpoint.load_denoiser``.

The cache is the user's cache folder (``$XDG_CACHE_HOME/jitkit`` or ``~/.cache/jitkit``); the run's name
includes a hash of its training config, so a changed preset or epoch count trains a new one. Training
writes into a temporary folder that is renamed into place only when it finished, so an interrupted run
never leaves a half-trained model in the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

CACHED_RUN_PREFIX = "demo-shapes"


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/jitkit``, else ``~/.cache/jitkit``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "jitkit"


def cached_run_dir(cache_dir: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Path:
    """``CACHE/demo-shapes-<hash of the training config>`` (the output folder left out of the hash)."""
    d = shapes_run_config("", overrides).to_dict()
    d["train"].pop("out", None)
    digest = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:10]
    return Path(cache_dir or default_cache_dir()).expanduser() / f"{CACHED_RUN_PREFIX}-{digest}"


def is_complete_run(run_dir: Path) -> bool:
    """A run folder whose training finished (it has ``checkpoints/last`` with weights)."""
    last = run_dir / "checkpoints" / "last"
    return last.is_dir() and any(last.glob("*.safetensors"))


def shapes_run_config(out: str | Path, overrides: dict[str, Any] | None = None) -> Any:
    """The ``shapes`` preset as a RunConfig writing to ``out`` (plus dotted ``overrides``)."""
    from jitkit.config import preset_dict, resolve_run_config

    cfg = resolve_run_config(preset_dict("shapes"))
    return cfg.override({"train.out": str(out), **(overrides or {})})


def ensure_shapes_model(
    cache_dir: str | Path | None = None,
    *,
    retrain: bool = False,
    overrides: dict[str, Any] | None = None,
    train_fn: Callable[..., Any] | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """The cached shapes run folder, training it first (with progress) when it is missing or ``retrain``.

    ``train_fn`` defaults to ``jitkit.train.train`` (``train(cfg, callbacks=[...]) -> run folder``; its "end"
    event marks a run that reached its last step); tests pass a stand-in.
    """
    final = cached_run_dir(cache_dir, overrides)
    if is_complete_run(final) and not retrain:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    cfg = shapes_run_config(tmp, overrides)
    if train_fn is None:
        from jitkit.train import train as train_fn
    log(
        f"jitkit demo: training the small shapes model ({cfg.model.name}, {cfg.train.epochs} epochs on "
        f"16x16 shapes) once; it is cached in {final}"
    )
    finished: list[bool] = []

    def on_event(event: str, info: dict) -> None:
        if event == "end":  # sent only when training ran to its last step
            finished.append(True)

    try:
        run_dir = Path(train_fn(cfg, callbacks=[on_event]))
        if not finished:  # the trainer saves and returns on Ctrl-C / SIGTERM
            log(
                "jitkit demo: training stopped before its last step; nothing was cached "
                "(run `jitkit demo` again to train the shapes model from the start)"
            )
            raise KeyboardInterrupt
        if not is_complete_run(run_dir):
            raise FileNotFoundError(f"training finished but {run_dir} has no checkpoints/last/*.safetensors")
        if final.exists():
            old = final.parent / f".{final.name}.old-{os.getpid()}"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(run_dir, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def demo_data_images(data_cfg: Any, img_size: int, per_class: int = 2) -> tuple[Any, Any] | None:
    """(uint8 images [M, 3, S, S], labels [M]) of a run's built-in data set for "start from a data image":
    ``per_class`` held-out (validation) images of every class of the ``shapes`` data; None for other data
    (an image folder may be large or gone)."""
    import numpy as np

    if str(getattr(data_cfg, "data", "")).strip().lower() != "shapes":
        return None
    from jitkit.data import build_dataset

    ds = build_dataset(data_cfg.replace(img_size=img_size, per_class=per_class), split="val")
    items = [ds[i] for i in range(len(ds))]
    return np.stack([np.asarray(x) for x, _ in items]), np.asarray([int(y) for _, y in items], dtype=np.int64)
