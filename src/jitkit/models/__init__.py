"""Networks: JiT (and the toy DiT baseline); they never see noise, losses or devices."""

from jitkit.models.jit import JiT
from jitkit.models.registry import build_model, count_params, list_models

__all__ = ["JiT", "build_model", "count_params", "list_models"]
