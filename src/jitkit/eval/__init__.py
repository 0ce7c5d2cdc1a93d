"""Evaluation: sampling to disk, FID/IS/precision-recall, reference statistics, shapes and swissroll metrics.

Submodules are imported on demand (``jitkit.eval.fid``, ``jitkit.eval.generate``, ``jitkit.eval.shapes_metric``,
``jitkit.eval.swissroll_metric``, ``jitkit.eval.hooks``); torch-fidelity is only imported when FID/IS are
computed from images.
"""
