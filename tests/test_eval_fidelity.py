"""jitkit.eval.fidelity without torch-fidelity: where the Inception weights are looked for, and what the
errors say (tests/extra_eval runs the network itself)."""

from __future__ import annotations

import pytest
import torch

from jitkit.cli import main
from jitkit.data.shapes import class_names, render_shapes
from jitkit.eval import fidelity
from jitkit.eval.sample_folder import SampleFolder


@pytest.fixture()
def no_weights(tmp_path, monkeypatch):
    """No weights anywhere: no environment variable, an empty hub cache."""
    monkeypatch.delenv(fidelity.WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_missing_inception_weights_say_where_to_get_them(tmp_path, monkeypatch, no_weights):
    with pytest.raises(fidelity.InceptionWeightsMissing) as e:
        fidelity.find_inception_weights()
    msg = str(e.value)
    assert fidelity.INCEPTION_URL in msg and "inception_weights" in msg and fidelity.WEIGHTS_ENV in msg
    assert "--inception-weights" not in msg  # the library names its parameter; the CLI names the flag
    with pytest.raises(FileNotFoundError, match="no such file"):
        fidelity.find_inception_weights(tmp_path / "nope.pth")
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    monkeypatch.setenv(fidelity.WEIGHTS_ENV, str(w))
    assert fidelity.find_inception_weights() == w
    monkeypatch.delenv(fidelity.WEIGHTS_ENV)
    cached = no_weights / "checkpoints" / fidelity.INCEPTION_FILE
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert fidelity.find_inception_weights() == cached


def test_the_cli_names_the_weights_flag(tmp_path, monkeypatch, no_weights, capsys):
    images, labels = render_shapes(per_class=1, size=16, seed=0)
    folder = SampleFolder(tmp_path / "s", labels, class_names())
    folder.write(range(len(labels)), images)
    assert folder.finish()
    monkeypatch.setattr(fidelity, "import_torch_fidelity", lambda: object)  # get past the import
    assert main(["eval", str(tmp_path / "s"), "--metric", "is"]) == 2
    err = capsys.readouterr().err
    assert "--inception-weights PATH" in err and fidelity.INCEPTION_URL in err
