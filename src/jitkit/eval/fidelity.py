"""FID / Inception Score / precision-recall of images through torch-fidelity's Inception network, offline.

torch-fidelity (optional extra ``pip install 'jitkit[eval]'``) provides the TF-compatible InceptionV3
(``inception-v3-compat``, the network behind the JiT paper's numbers): images uint8 [B, 3, H, W] of any size
are resized to 299 inside it; features '2048' (pool) feed FID and precision/recall, 'logits_unbiased' feed IS.
The statistics and distances are jitkit's own (``jitkit.eval.fid``). What takes an extractor
(``extract_features``, ``jitkit.eval.hooks.FIDEval``) accepts any callable with the same contract
(``FeatureExtractor``).

Nothing is downloaded: the weights file (``weights-inception-2015-12-05-6726825d.pth``) is taken from
the ``weights`` path given, else ``$JITKIT_INCEPTION_WEIGHTS``, else torch's hub cache where torch-fidelity
keeps it after one online run; missing, the error says where to get it.

torch-fidelity imports torchvision, which must match the installed torch; all imports of it are lazy.

Shape key: N images, B batch, F features (2048), K logits (1008).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jitkit.runtime.extras import MissingExtra

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_FILE}"
WEIGHTS_ENV = "JITKIT_INCEPTION_WEIGHTS"

# what FID and IS read from a feature extractor: pool features [B, F] and classifier logits [B, K]
FEATURE_KEYS = ("2048", "logits_unbiased")

# uint8 images [B, 3, H, W] → {"2048": [B, F], "logits_unbiased": [B, K]} (numpy arrays or tensors); the
# Inception network below, or any stand-in with that contract (tests use a small random conv net)
FeatureExtractor = Callable[[torch.Tensor], Mapping[str, Any]]


class InceptionWeightsMissing(FileNotFoundError):
    """No local file with the Inception weights."""


class FidelityUnavailable(MissingExtra):
    """torch-fidelity (or the torchvision it imports) cannot be imported; a ValueError so the CLI reports it."""


def import_torch_fidelity():
    """``import torch_fidelity`` with an error that says what to install when it fails."""
    try:
        import torch_fidelity  # noqa: F401
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as e:  # ImportError, or torchvision failing against this torch build
        raise FidelityUnavailable(
            "FID and Inception Score need torch-fidelity (the optional extra): pip install 'jitkit[eval]'. "
            f"It imports torchvision, which must be the build made for your torch {torch.__version__} "
            "(install torch and torchvision together, e.g. pip install torch==X torchvision==Y). "
            f"The import failed with: {type(e).__name__}: {e}. Built-in metrics without Inception: "
            "jitkit eval --metric shapes|swissroll"
        ) from e
    return FeatureExtractorInceptionV3


def find_inception_weights(path: str | Path | None = None) -> Path:
    """The local Inception weights: ``path``, else $JITKIT_INCEPTION_WEIGHTS, else torch's hub cache."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise InceptionWeightsMissing(f"Inception weights {p}: no such file. {_where_to_get()}")
        return p
    env = os.environ.get(WEIGHTS_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise InceptionWeightsMissing(f"${WEIGHTS_ENV}={env}: no such file. {_where_to_get()}")
        return p
    cached = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if cached.is_file():
        return cached
    raise InceptionWeightsMissing(
        f"the Inception weights for FID/IS are not available offline. {_where_to_get()}"
    )


def _where_to_get() -> str:
    return (
        f"Download {INCEPTION_FILE} (the pt_inception-2015-12-05 weights torch-fidelity uses, 91 MB) on a machine "
        f"with internet from {INCEPTION_URL} and pass its path (inception_weights) or set {WEIGHTS_ENV}=PATH "
        f"(or place it at {Path(torch.hub.get_dir()) / 'checkpoints' / INCEPTION_FILE})"
    )


class InceptionFeatures:
    """torch-fidelity's InceptionV3 on a device: ``__call__(uint8 [B,3,H,W]) → {'2048': [B,2048], 'logits_unbiased':
    [B,1008]}`` as float32 numpy arrays (statistics are computed in float64)."""

    FEATURES = FEATURE_KEYS

    def __init__(self, weights: str | Path | None = None, device: str | torch.device = "cpu") -> None:
        cls = import_torch_fidelity()
        self.weights = find_inception_weights(weights)
        self.device = torch.device(device)
        try:
            self.net = cls(
                "inception-v3-compat", list(self.FEATURES), feature_extractor_weights_path=str(self.weights)
            )
        except Exception as e:
            raise ValueError(
                f"cannot load Inception weights from {self.weights}: {type(e).__name__}: {e}. {_where_to_get()}"
            ) from e
        self.net = self.net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"Inception expects uint8 images [B, 3, H, W], found {images.dtype} {list(images.shape)}"
            )
        out = self.net(images.to(self.device))
        return {k: v.detach().float().cpu().numpy() for k, v in zip(self.FEATURES, out)}


def feature_arrays(extractor: FeatureExtractor, images: torch.Tensor) -> dict[str, np.ndarray]:
    """The extractor's features of one batch of uint8 images as float32 numpy arrays, one row per image."""
    out = extractor(images)
    missing = [k for k in FEATURE_KEYS if k not in out]
    if missing:
        raise ValueError(
            f"a feature extractor must return {list(FEATURE_KEYS)} (pool features for FID, logits for IS), "
            f"found keys {sorted(out)}"
        )
    arrays = {}
    for k in FEATURE_KEYS:
        v = out[k]
        v = v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v, np.float32)
        if v.ndim != 2 or v.shape[0] != len(images):
            raise ValueError(
                f"feature {k!r} must be [B={len(images)}, F] for a batch of {len(images)} images, "
                f"found {list(v.shape)}"
            )
        arrays[k] = v
    return arrays


def extract_features(
    batches: Iterable[torch.Tensor],
    extractor: FeatureExtractor,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Run the extractor over uint8 batches → {'2048': [N,2048], 'logits_unbiased': [N,1008]}."""
    from tqdm.auto import tqdm

    parts: dict[str, list[np.ndarray]] = {k: [] for k in FEATURE_KEYS}
    with tqdm(total=total, disable=not progress, desc="inception", unit="img", dynamic_ncols=True) as bar:
        for b in batches:
            feats = feature_arrays(extractor, b)
            for k in parts:
                parts[k].append(feats[k])
            bar.update(len(b))
    if not parts["2048"]:
        raise ValueError("no images to evaluate")
    return {k: np.concatenate(v) for k, v in parts.items()}


def image_metrics(
    features: dict[str, np.ndarray],
    ref: dict[str, np.ndarray] | None,
    *,
    isc: bool = True,
    prc: bool = True,
    k: int = 3,
    splits: int = 10,
) -> dict[str, Any]:
    """FID (when ``ref`` has mu/sigma), IS, and precision/recall (when ``ref`` has features) from features."""
    from jitkit.eval.fid import feature_stats, frechet_distance, inception_score, precision_recall

    out: dict[str, Any] = {"n": int(len(features["2048"]))}
    if ref is not None:
        mu, sigma = feature_stats(features["2048"])
        out["fid"] = frechet_distance(mu, sigma, ref["mu"], ref["sigma"])
        if prc and "features" in ref:
            out.update(precision_recall(ref["features"], features["2048"], k=k))
    if isc:
        out["inception_score"], out["inception_score_std"] = inception_score(
            features["logits_unbiased"], splits
        )
    return out
