"""The flow-matching objective of JiT, written once as pure tensor functions.

Path (t = 0 noise, t = 1 data):   z_t = t·x + (1 − t)·e,   e ~ N(0, noise_scale²)
Velocity:                          v = dz/dt = x − e = (x − z_t)/(1 − t) = (z_t − e)/t

A network output is one of three parameterisations (``pred``): the clean image x, the noise ε or the
velocity v. Any of them converts into any other given (z_t, t); divisions by (1 − t) and by t are clamped
below by t_eps (0.05 in the reference) so that the conversions stay finite at the ends of the path.
The loss is taken in x, ε or v space (``loss``); JiT's choice is x-prediction with the v-loss.

Shape key: B batch; x, e, z are [B, ...]; t is [B].
"""

from __future__ import annotations

import torch
from torch import nn

from jitkit.config import DiffusionConfig

_KINDS = ("x", "eps", "v")


def expand_t(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """t [B] → [B, 1, …, 1] broadcastable against ``like`` [B, …]."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def sample_t(
    n: int,
    P_mean: float = -0.8,
    P_std: float = 0.8,
    *,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Logit-normal times: t = sigmoid(u), u ~ N(P_mean, P_std²).  → [n]."""
    u = torch.randn(n, generator=generator, device=device) * P_std + P_mean
    return torch.sigmoid(u)


def interpolate(x: torch.Tensor, e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z_t = t·x + (1 − t)·e."""
    tb = expand_t(t, x)
    return tb * x + (1 - tb) * e


def convert(
    out: torch.Tensor, src: str, dst: str, z: torch.Tensor, t: torch.Tensor, t_eps: float = 0.05
) -> torch.Tensor:
    """Convert a prediction of kind ``src`` (x | eps | v) at (z, t) into kind ``dst``.

    x → v:   v = (x − z)/max(1 − t, t_eps)        x → ε:   ε = (z − t·x)/max(1 − t, t_eps)
    ε → x:   x = (z − (1 − t)·ε)/max(t, t_eps)    ε → v:   v = (z − ε)/max(t, t_eps)
    v → x:   x = z + (1 − t)·v                    v → ε:   ε = z − t·v
    Away from the clamps these are exact inverses of each other.
    """
    if src not in _KINDS or dst not in _KINDS:
        raise ValueError(f"prediction kinds are {_KINDS}, received {src!r} → {dst!r}")
    if src == dst:
        return out
    tb = expand_t(t, z)
    if src == "x":
        if dst == "v":
            return (out - z) / (1 - tb).clamp_min(t_eps)
        return (z - tb * out) / (1 - tb).clamp_min(t_eps)
    if src == "eps":
        if dst == "x":
            return (z - (1 - tb) * out) / tb.clamp_min(t_eps)
        return (z - out) / tb.clamp_min(t_eps)
    # src == "v"
    if dst == "x":
        return z + (1 - tb) * out
    return z - tb * out


def target(x: torch.Tensor, e: torch.Tensor, z: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    """The ground truth of kind ``kind`` for a sample (x, e) at (z, t): x, e or v = x − e."""
    if kind == "x":
        return x
    if kind == "eps":
        return e
    if kind == "v":
        return x - e
    raise ValueError(f"prediction kinds are {_KINDS}, received {kind!r}")


def flow_loss(
    out: torch.Tensor,
    x: torch.Tensor,
    e: torch.Tensor,
    z: torch.Tensor,
    t: torch.Tensor,
    pred: str = "x",
    loss: str = "v",
    t_eps: float = 0.05,
    reduce: bool = True,
) -> torch.Tensor:
    """Mean squared error between prediction and truth, both mapped into ``loss`` space.

    The truth is mapped through the same (clamped) conversion as the prediction, so the loss is zero
    exactly when the network output equals the truth of its own kind. For x-prediction with the v-loss this
    is the reference's loss: v = (x − z)/max(1−t, t_eps), v̂ = (x̂ − z)/max(1−t, t_eps), mean (v − v̂)².
    """
    truth = target(x, e, z, t, pred)
    diff = convert(out, pred, loss, z, t, t_eps) - convert(truth, pred, loss, z, t, t_eps)
    per = diff.pow(2).flatten(1).mean(1)  # [B]
    return per.mean() if reduce else per


def drop_labels(
    y: torch.Tensor, null_class: int, p: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Replace each label by the null class with probability p (classifier-free guidance training)."""
    if p <= 0:
        return y
    keep = torch.rand(y.shape, device=y.device, generator=generator) >= p
    return torch.where(keep, y, torch.full_like(y, null_class))


class Denoiser(nn.Module):
    """A network plus the objective. Holds the network as ``net`` so the state-dict keys are ``net.<path>``,
    as in the reference release.

    The network maps (z_t, t, y) to a prediction of kind ``cfg.pred``; ``num_classes`` is the null class.
    """

    def __init__(self, net: nn.Module, cfg: DiffusionConfig, num_classes: int) -> None:
        super().__init__()
        self.net = net
        self.cfg = cfg
        self.num_classes = num_classes

    @property
    def null_class(self) -> int:
        return self.num_classes

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return self.loss(x, y, generator=generator)

    def loss(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None = None, reduce: bool = True
    ) -> torch.Tensor:
        """One training loss: label drop, t ~ logit-normal, e ~ N(0, noise_scale²), z_t, MSE in loss space."""
        c = self.cfg
        if self.training and c.label_drop_prob > 0 and self.num_classes > 1:
            y = drop_labels(y, self.null_class, c.label_drop_prob, generator)
        t = sample_t(x.shape[0], c.P_mean, c.P_std, device=x.device, generator=generator)
        e = torch.randn(x.shape, device=x.device, generator=generator, dtype=x.dtype) * c.noise_scale
        z = interpolate(x, e, t)
        out = self.net(z, t, y)
        return flow_loss(out.float(), x, e, z, t, c.pred, c.loss, c.t_eps, reduce=reduce)

    def predict(self, z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, kind: str = "v") -> torch.Tensor:
        """The network's prediction at (z, t, y) converted to ``kind`` (x | eps | v)."""
        out = self.net(z, t, y).to(z.dtype)
        return convert(out, self.cfg.pred, kind, z, t, self.cfg.t_eps)
