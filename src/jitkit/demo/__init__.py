"""The interactive demo: a local page that shows a JiT denoising step by step (``jitkit demo``)."""

from __future__ import annotations

from jitkit.demo.server import TokenBucket, create_app, serve
from jitkit.demo.trajectory import RecordedRun, record_run

__all__ = ["create_app", "serve", "TokenBucket", "record_run", "RecordedRun"]
