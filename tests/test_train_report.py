"""Run reporting: log.jsonl records over a window of steps, and which classes a preview shows."""

from __future__ import annotations

from jitkit.train.report import Reporter, preview_labels
from jitkit.train.run_folder import read_log


def test_log_records_average_the_steps_since_the_last_record(tmp_path):
    log = tmp_path / "log.jsonl"
    rep = Reporter(
        log,
        main=True,
        progress=False,
        total_steps=5,
        step=0,
        steps_per_epoch=4,
        effective_batch=8,
        log_every=2,
    )
    for s, loss in enumerate([1.0, 3.0, 5.0, 7.0, 9.0], start=1):
        rep.step(s, (s - 1) // 4, loss, lr=0.1 * s, grad_norm=None if s < 5 else 0.5)
    rep.close()
    rows = read_log(log)
    assert [(r["step"], r["loss"], r["lr"]) for r in rows] == [(2, 2.0, 0.2), (4, 6.0, 0.4), (5, 9.0, 0.5)]
    assert [r["epoch"] for r in rows] == [0.5, 1.0, 1.25] and rows[-1]["grad_norm"] == 0.5
    assert "grad_norm" not in rows[0] and all(r["img_per_s"] > 0 for r in rows)
    other = Reporter(
        tmp_path / "rank1.jsonl",
        main=False,
        progress=False,
        total_steps=5,
        step=0,
        steps_per_epoch=4,
        effective_batch=8,
        log_every=1,
    )  # rank 1
    other.step(1, 0, 1.0, lr=0.1, grad_norm=None)
    other.close()
    assert not (tmp_path / "rank1.jsonl").exists()  # only rank 0 writes


def test_preview_labels_show_at_most_16_classes_8_each():
    assert preview_labels(3) == [0] * 8 + [1] * 8 + [2] * 8
    many = preview_labels(1000)
    shown = sorted(set(many))
    assert len(many) == 128 and len(shown) == 16 and shown[0] == 0 and shown[-1] == 999
    assert all(many[8 * i : 8 * i + 8] == [shown[i]] * 8 for i in range(16))
