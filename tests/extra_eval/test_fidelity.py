"""jitkit's FID/IS against torch-fidelity's own, on torch-fidelity's Inception with random local weights.

Needs the optional extra (torch-fidelity, scipy, and a torchvision that matches torch); without it the tests
are skipped with the reason. `.ci/extra-eval` builds such an environment and runs this file. No network:
the Inception weights are randomly initialised (He init, so features keep a useful scale) and saved locally.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

try:
    import torch_fidelity
    from torch_fidelity import feature_extractor_inceptionv3 as fe_mod
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_features_to_metric
except Exception as e:  # ImportError, or torchvision failing against this torch
    pytest.skip(
        f"torch-fidelity unavailable ({type(e).__name__}: {e}); run .ci/extra-eval", allow_module_level=True
    )

from jitkit.cli import main
from jitkit.eval.fid import feature_stats, frechet_distance, inception_score
from jitkit.eval.fidelity import InceptionFeatures, extract_features
from jitkit.eval.sample_folder import SampleFolder

N = 12  # images per set: Inception at 299 px is slow on a shared CPU


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random Inception state dict in torch-fidelity's layout, saved to a local file."""
    mp = pytest.MonkeyPatch()
    mp.setattr(fe_mod, "load_state_dict_from_url", lambda *a, **k: {})
    mp.setattr(fe_mod.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None)
    torch.manual_seed(0)
    net = fe_mod.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    mp.undo()
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("w") / "inception-random.pth"
    torch.save(net.state_dict(), path)
    return path


def _images(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8).numpy()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    out = []
    for name, seed in (("a", 1), ("b", 2)):
        imgs = _images(seed)
        f = SampleFolder(root / name, np.zeros(N, np.int64), ["x"])
        f.write(range(N), imgs)
        f.finish()
        out.append((root / name, imgs))
    return out


def test_same_features_same_numbers(weights, folders):
    ext = InceptionFeatures(weights, "cpu")
    fa = extract_features([torch.as_tensor(folders[0][1])], ext, progress=False)
    fb = extract_features([torch.as_tensor(folders[1][1])], ext, progress=False)
    assert np.isfinite(fa["2048"]).all() and fa["2048"].std() > 1e-3
    # FID: torch-fidelity's statistics and distance on the same features
    sa = fid_features_to_statistics(torch.as_tensor(fa["2048"], dtype=torch.float32))
    sb = fid_features_to_statistics(torch.as_tensor(fb["2048"], dtype=torch.float32))
    theirs = fid_statistics_to_metric(sa, sb, verbose=False)["frechet_inception_distance"]
    ours = frechet_distance(
        *feature_stats(fa["2048"].astype(np.float32)), *feature_stats(fb["2048"].astype(np.float32))
    )
    assert ours == pytest.approx(theirs, rel=1e-4)
    # IS: same shuffle seed and split boundaries
    t = isc_features_to_metric(torch.as_tensor(fa["logits_unbiased"]), splits=3, shuffle=True, rng_seed=2020)
    m, s = inception_score(fa["logits_unbiased"], splits=3, shuffle_seed=2020)
    assert m == pytest.approx(t["inception_score_mean"], rel=1e-9) and s == pytest.approx(
        t["inception_score_std"], rel=1e-6
    )


def test_cli_end_to_end_matches_torch_fidelity(weights, folders, tmp_path):
    (a, _), (b, _) = folders
    ref = tmp_path / "ref.npz"
    assert (
        main(
            [
                "ref-stats",
                str(b),
                "--out",
                str(ref),
                "--inception-weights",
                str(weights),
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
        == 0
    )
    res = tmp_path / "r.json"
    assert (
        main(
            [
                "eval",
                str(a),
                "--ref",
                str(ref),
                "--metric",
                "fid,is",
                "--splits",
                "3",
                "--inception-weights",
                str(weights),
                "--device",
                "cpu",
                "--no-progress",
                "--json",
                str(res),
            ]
        )
        == 0
    )
    ours = json.loads(res.read_text())
    theirs = torch_fidelity.calculate_metrics(
        input1=str(a),
        input2=str(b),
        fid=True,
        isc=True,
        isc_splits=3,
        cuda=False,
        cache=False,
        verbose=False,
        feature_extractor_weights_path=str(weights),
        samples_find_ext="png",
    )
    assert ours["fid"] == pytest.approx(theirs["frechet_inception_distance"], rel=1e-3)
    assert ours["inception_score"] == pytest.approx(theirs["inception_score_mean"], rel=1e-4)
