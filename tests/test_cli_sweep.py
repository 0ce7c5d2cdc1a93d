"""``jitkit sweep`` end to end on a tiny shapes run: table, plot, grids, resuming, --apply, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from jitkit.cli import main


def save_tiny_shapes_run(tiny, root: Path, **sampler) -> Path:
    """A run folder holding one checkpoint of a random tiny JiT on 16 px shapes (16 classes)."""
    from jitkit.checkpoint import save_checkpoint
    from jitkit.config import preset_dict, resolve_run_config
    from jitkit.data.shapes import class_names

    d = copy.deepcopy(preset_dict("shapes"))  # preset_dict shares its nested dicts with the preset table
    d["model"] = dict(tiny.RUN_MODEL)
    d["sampler"].update({"steps": 3, **sampler})
    rc = resolve_run_config(d)
    sd = tiny.denoiser(tiny.model_config(**tiny.RUN_MODEL)).state_dict()
    save_checkpoint(
        root / "checkpoints" / "last", config=rc, classes=class_names(), model=sd, ema1=sd, ema2=sd
    )
    (root / "config.json").write_text(json.dumps(rc.to_dict()))
    return root


@pytest.fixture()
def run(tiny, tmp_path):
    return save_tiny_shapes_run(tiny, tmp_path / "run")


def test_sweep_writes_table_plot_grids_and_applies_the_best(run, tmp_path, capsys):
    out = tmp_path / "sw"
    argv = [
        "sweep",
        str(run),
        "--cfgs",
        "1,2",
        "--samplers",
        "euler,dpm++2m",
        "--steps",
        "2",
        "--per-class",
        "1",
    ]
    argv += ["--out", str(out), "--device", "cpu", "--no-progress", "--apply"]
    before = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())["config"]["sampler"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["method"] for r in rows} == {"euler", "dpm++2m"}
    assert all("accuracy" in r and "mean_iou" in r for r in rows)  # the run's data set's own metric
    assert (
        (out / "sweep.png").is_file()
        and (out / "table.md").is_file()
        and len(list((out / "grids").iterdir())) == 4
    )
    printed = capsys.readouterr()
    assert "best " in printed.out and "default sampler is now" in printed.out
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    best = max(rows, key=lambda r: (r["accuracy"], r["mean_iou"], -r["nfe"]))
    assert (
        meta["config"]["sampler"]["method"] == best["method"]
        and meta["config"]["sampler"]["cfg"] == best["cfg"]
    )
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["previous"]["method"] == before["method"] and log[-1]["previous"]["steps"] == 3
    # run again: every setting is already there
    assert main(argv[:-1]) == 0
    assert capsys.readouterr().err.count("[done before]") == 4


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--cfgs", "1,nan"], "--cfgs: expected finite numbers"),
        (["--cfgs", "1,inf"], "--cfgs: expected finite numbers"),
        (
            ["--cfgs", "1", "--samplers", "dpm3"],
            "--samplers must be one of heun, euler, dpm++2m, dpm++3m, dpm++2m-pc, dpm++3m-pc",
        ),
        (["--cfgs", "1", "--time-grids", "karras"], "--time-grids must be one of uniform, logsnr, edm"),
        (["--cfgs", "1", "--intervals", "0.5"], "--intervals: expected LO-HI pairs"),
        (["--cfgs", "1", "--intervals", "0.9-0.1"], "--intervals must satisfy 0 <= LOW < HIGH <= 1"),
        (["--cfgs", "1", "--metric", "fid"], "needs reference statistics"),
    ],
)
def test_bad_input_is_refused_with_the_flag_named(run, tmp_path, capsys, extra, needle):
    rc = main(["sweep", str(run), "--out", str(tmp_path / "x"), "--device", "cpu", *extra])
    assert rc == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "x" / "results.jsonl").exists()  # refused before sampling anything
