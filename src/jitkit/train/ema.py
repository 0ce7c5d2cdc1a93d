"""Two exponential moving averages of a model's parameters, updated in place with fused foreach ops.

After every optimiser step, for each decay d ∈ {d1, d2} (0.9999 and 0.9996 in the reference):

    ema ← d·ema + (1 − d)·param

Sampling uses the first average. With ``warmup`` (off in the reference; useful for runs of a few thousand
steps) the decay used at update n (counting from 0) is min(d, (1 + n)/(10 + n)), so the averages forget the
initial weights quickly early on. Parameters that are not trained (``requires_grad=False``, e.g. JiT's fixed
``pos_embed``) are copied rather than averaged; buffers are taken from the model when a state dict is built.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EMA", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module behind DDP (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


class EMA:
    """Two EMAs of ``model``'s parameters (names as in ``model.state_dict()``).

    ``update(model)`` applies one step to both; ``averaged_state_dict(model, which)`` is a full state dict of
    the model with the averaged parameters (for checkpoints); ``copy_to(model, which)`` loads an average into
    a model; ``state_dict()`` / ``load_state_dict()`` round-trip both averages and the decays.
    """

    def __init__(
        self, model: nn.Module, decays: tuple[float, float] = (0.9999, 0.9996), warmup: bool = False
    ) -> None:
        model = unwrap_model(model)
        for d in decays:
            if not (0.0 <= d < 1.0):
                raise ValueError(f"EMA decays must lie in [0, 1), found {d}")
        self.decays = (float(decays[0]), float(decays[1]))
        self.warmup = bool(warmup)
        named = list(model.named_parameters())
        self.names = [n for n, _ in named]
        self.trainable = [p.requires_grad for _, p in named]
        self.shadows: tuple[list[torch.Tensor], list[torch.Tensor]] = (
            [p.detach().clone() for _, p in named],
            [p.detach().clone() for _, p in named],
        )
        self.num_updates = 0

    def _params(self, model: nn.Module) -> list[torch.Tensor]:
        params = [p for _, p in unwrap_model(model).named_parameters()]
        if len(params) != len(self.names):
            raise ValueError(
                f"EMA tracks {len(self.names)} parameters but the model has {len(params)}; "
                "was it built for another architecture?"
            )
        return params

    def current_decays(self) -> tuple[float, float]:
        """The decays the next update uses (the configured ones, or lower during the warm-up)."""
        if not self.warmup:
            return self.decays
        cap = (1.0 + self.num_updates) / (10.0 + self.num_updates)
        return (min(self.decays[0], cap), min(self.decays[1], cap))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """ema_i ← d_i·ema_i + (1 − d_i)·param for both decays (trainable parameters; others are copied)."""
        params = self._params(model)
        train_p = [p.detach() for p, t in zip(params, self.trainable) if t]
        for d, shadow in zip(self.current_decays(), self.shadows):
            train_s = [s for s, t in zip(shadow, self.trainable) if t]
            if train_s:
                # ema + (1 − d)·(p − ema): one pass over both lists where mul_ then add_ were two (measured:
                # benchmarks/README.md), equal up to float rounding
                torch._foreach_lerp_(train_s, train_p, 1.0 - d)
            for s, p, t in zip(shadow, params, self.trainable):
                if not t:
                    s.copy_(p.detach())
        self.num_updates += 1

    def _index(self, which: str | int) -> int:
        w = str(which).replace("ema", "")
        if w not in ("1", "2"):
            raise ValueError(f"EMA 'which' must be 1 or 2, found {which!r}")
        return int(w) - 1

    def averaged(self, which: str | int = 1) -> dict[str, torch.Tensor]:
        """Name → averaged parameter (the live tensors; clone before modifying)."""
        return dict(zip(self.names, self.shadows[self._index(which)]))

    def averaged_state_dict(self, model: nn.Module, which: str | int = 1) -> dict[str, torch.Tensor]:
        """``model.state_dict()`` with its parameters replaced by EMA ``which`` (buffers from the model)."""
        sd = dict(unwrap_model(model).state_dict())
        for n, s in self.averaged(which).items():
            if n in sd:
                sd[n] = s
        return sd

    @torch.no_grad()
    def copy_to(self, model: nn.Module, which: str | int = 1) -> nn.Module:
        """Copy EMA ``which`` into ``model``'s parameters (any model of the same architecture)."""
        for p, s in zip(self._params(model), self.shadows[self._index(which)]):
            p.copy_(s.to(device=p.device, dtype=p.dtype))
        return model

    @torch.no_grad()
    def load_averaged(self, which: str | int, sd: dict[str, torch.Tensor]) -> None:
        """Set EMA ``which`` from a state dict keyed like the model (e.g. a checkpoint's ema1.safetensors)."""
        missing = [n for n in self.names if n not in sd]
        if missing:
            raise ValueError(f"EMA state lacks parameter {missing[0]!r} ({len(missing)} missing in all)")
        from jitkit.runtime.dist import copy_full_into

        for n, s in zip(self.names, self.shadows[self._index(which)]):
            copy_full_into(s, sd[n])

    def state_dict(self) -> dict:
        return {
            "decays": list(self.decays),
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "ema1": {n: s.detach().clone() for n, s in zip(self.names, self.shadows[0])},
            "ema2": {n: s.detach().clone() for n, s in zip(self.names, self.shadows[1])},
        }

    def load_state_dict(self, sd: dict) -> None:
        self.load_averaged(1, sd["ema1"])
        self.load_averaged(2, sd["ema2"])
        self.num_updates = int(sd.get("num_updates", 0))

    def to(self, device: torch.device | str) -> EMA:
        self.shadows = tuple([s.to(device) for s in sh] for sh in self.shadows)  # type: ignore[assignment]
        return self
