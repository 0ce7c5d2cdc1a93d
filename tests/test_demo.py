"""The demo's JSON API (Flask test client), its rate limiter and the model cache of ``jitkit demo``."""

from __future__ import annotations

import base64
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("flask")

from jitkit.config import SamplerConfig  # noqa: E402
from jitkit.demo.server import TokenBucket, create_app  # noqa: E402
from jitkit.demo.trajectory import record_run  # noqa: E402
from jitkit.diffusion.generate import sample_denoiser  # noqa: E402
from jitkit.diffusion.sampling import initial_noise, to_uint8  # noqa: E402

CLASSES = ["red_circle", "green_square", "blue_triangle", "yellow_cross"]
STATIC = Path(__file__).resolve().parents[1] / "src" / "jitkit" / "demo" / "static"


def tiny_demo_model(tiny, seed: int = 0):
    """(Denoiser, ModelConfig): the tiny random JiT of conftest on 16 px (a 4×4 patch grid), 4 classes."""
    cfg = tiny.model_config(img_size=16, num_classes=len(CLASSES))
    return tiny.denoiser(cfg, seed=seed), cfg


@pytest.fixture(autouse=True)
def _one_thread():
    # a 2-block model at batch 1: one thread is fastest, and the machine is shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def model(tiny):
    return tiny_demo_model(tiny)


@pytest.fixture()
def client(model):
    den, cfg = model
    app = create_app(den, cfg, CLASSES, sampler=SamplerConfig(steps=8), steps_range=(1, 30), burst=1000)
    return app.test_client()


def frames(payload: dict, key: str) -> np.ndarray:
    S = payload["width"]
    return np.stack([np.frombuffer(base64.b64decode(b), np.uint8).reshape(S, S, 3) for b in payload[key]])


def test_info(client):
    r = client.get("/api/info")
    assert r.status_code == 200
    info = r.get_json()
    assert info["classes"] == CLASSES
    assert (info["img_size"], info["patch_size"], info["grid_size"]) == (16, 4, 4)
    assert info["steps_range"] == [1, 30]
    assert info["samplers"] == ["heun", "euler", "dpm++2m", "dpm++3m", "dpm++2m-pc", "dpm++3m-pc"]  # SAMPLERS
    assert info["data_images"] == []  # no data images given: the page offers noise only
    assert info["defaults"]["steps"] == 8 and info["defaults"]["class"] == CLASSES[0]


@pytest.mark.parametrize("method,steps", [("heun", 6), ("euler", 5)])
def test_trajectory_shape_and_final_frame(client, method, steps):
    r = client.post(
        "/api/sample", json={"class": "blue_triangle", "seed": 7, "steps": steps, "sampler": method}
    )
    assert r.status_code == 200, r.get_json()
    d = r.get_json()
    assert d["class_index"] == 2 and d["steps"] == steps and d["sampler"] == method
    z, x = frames(d, "z"), frames(d, "x")
    assert z.shape == (steps + 1, 16, 16, 3) and x.shape == (steps, 16, 16, 3)
    assert len(d["t"]) == steps + 1 and len(d["x_rms"]) == steps and len(d["scale"]) == steps
    np.testing.assert_allclose(d["t"], np.linspace(0, 1, steps + 1), atol=1e-6)
    final = np.frombuffer(base64.b64decode(d["final"]), np.uint8).reshape(16, 16, 3)
    assert np.array_equal(final, z[-1])
    # the first state is the seed's noise, the way the library draws it
    z0 = to_uint8(initial_noise(1, (3, 16, 16), 1.0, seed=7))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(z[0], z0)
    # with 1/steps >= t_eps the final Euler step lands exactly on the last x-prediction
    assert np.array_equal(x[-1], final) and d["last_x_max_abs_diff"] == 0
    assert d["nfe"] == (2 * steps - 1 if method == "heun" else steps)
    assert d["x_rms"][-1] < 1e-6  # RMS(x̂_{K-1} − final) in model units
    assert not np.array_equal(x[0], x[-1])  # the prediction moves


def test_more_steps_than_one_over_t_eps_reports_the_difference(client):
    d = client.get("/api/sample?steps=25&seed=3&sampler=euler").get_json()  # 1/25 < t_eps = 0.05
    x, final = frames(d, "x")[-1].astype(int), frames(d, "z")[-1].astype(int)
    assert d["last_x_max_abs_diff"] == int(np.abs(x - final).max())


def test_determinism_under_a_seed(client):
    q = {"class": 1, "seed": 123, "steps": 5, "sampler": "euler", "cfg": 2.0}
    a = client.post("/api/sample", json=q).get_json()
    b = client.post("/api/sample", json=q).get_json()
    c = client.get("/api/sample?class=green_square&seed=123&steps=5&sampler=euler&cfg=2").get_json()
    for key in ("z", "x", "final", "t"):
        assert a[key] == b[key] == c[key]
    other = client.post("/api/sample", json={**q, "seed": 124}).get_json()
    assert other["z"][0] != a["z"][0] and other["final"] != a["final"]
    other_class = client.post("/api/sample", json={**q, "class": 3}).get_json()
    assert other_class["z"][0] == a["z"][0] and other_class["x"][0] != a["x"][0]
    assert a["scale"] == [2.0] * 5  # cfg applied over the whole (0, 1) interval


def test_concurrent_requests_get_their_own_runs(client):
    seeds = [11, 12, 13, 14]
    expected = {
        s: client.post("/api/sample", json={"seed": s, "steps": 4}).get_json()["final"] for s in seeds
    }
    got: dict[int, str] = {}

    def worker(s: int) -> None:
        got[s] = client.post("/api/sample", json={"seed": s, "steps": 4}).get_json()["final"]

    threads = [threading.Thread(target=worker, args=(s,)) for s in seeds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == expected


@pytest.mark.parametrize(
    "params,needle",
    [
        ({"class": "purple_blob"}, "unknown class"),
        ({"class": 4}, "unknown class"),
        ({"class": True}, "unknown class"),
        ({"steps": 0}, "steps"),
        ({"steps": 31}, "steps"),
        ({"steps": "ten"}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"cfg": "abc"}, "cfg"),
        ({"cfg": "nan"}, "cfg"),
        ({"cfg": -1}, "cfg"),
        ({"cfg": [1]}, "cfg"),
        ({"sampler": "rk4"}, "sampler"),
        ({"seed": -1}, "seed"),
        ({"seed": "x"}, "seed"),
        ({"colour": "red"}, "unknown parameter"),
    ],
)
def test_bad_parameters_get_400_with_a_message(client, params, needle):
    r = client.post("/api/sample", json=params)
    assert r.status_code == 400
    body = r.get_json()
    assert needle in body["error"]
    assert "Traceback" not in r.get_data(as_text=True)
    # the same through the query string (values arrive as strings)
    if not isinstance(next(iter(params.values())), (list, bool)):
        q = "&".join(f"{k}={v}" for k, v in params.items())
        r2 = client.get(f"/api/sample?{q}")
        assert r2.status_code == 400 and needle in r2.get_json()["error"]


def test_body_must_be_a_json_object(client):
    r = client.post("/api/sample", data="steps=5", content_type="application/json")
    assert r.status_code == 400 and "JSON" in r.get_json()["error"]
    r = client.post("/api/sample", json=[1, 2])
    assert r.status_code == 400 and "JSON object" in r.get_json()["error"]


def test_size_bound(client):
    r = client.post("/api/sample", data=b"{" + b" " * 20000 + b"}", content_type="application/json")
    assert r.status_code == 413
    assert "too large" in r.get_json()["error"]


def test_http_errors_are_json(client):
    r = client.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.get_json()
    r = client.put("/api/sample", json={})
    assert r.status_code == 405 and "error" in r.get_json()


def test_internal_errors_are_json_without_a_stack_trace(model):
    den, cfg = model

    class Broken(torch.nn.Module):
        cfg = den.cfg
        null_class = den.null_class

        def predict(self, *a, **k):
            raise RuntimeError("secret internal detail")

    app = create_app(Broken(), cfg, CLASSES)
    r = app.test_client().post("/api/sample", json={"steps": 2})
    assert r.status_code == 500
    text = r.get_data(as_text=True)
    assert "internal error" in r.get_json()["error"]
    assert "secret internal detail" not in text and "Traceback" not in text


def test_rate_limit_per_client(model):
    den, cfg = model
    app = create_app(den, cfg, CLASSES, rate=0.001, burst=3)
    c = app.test_client()
    codes = [c.get("/api/info").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    r = c.get("/api/info")
    assert r.status_code == 429 and "too many requests" in r.get_json()["error"]
    assert int(r.headers["Retry-After"]) >= 1
    # another client has its own bucket; the page itself is not rate-limited
    assert c.get("/api/info", environ_base={"REMOTE_ADDR": "10.0.0.2"}).status_code == 200
    assert c.get("/").status_code == 200


def test_token_bucket_refills():
    now = [0.0]
    b = TokenBucket(rate=2.0, burst=2, clock=lambda: now[0])
    assert b.take("a") == 0 and b.take("a") == 0
    wait = b.take("a")
    assert wait == pytest.approx(0.5)
    now[0] += 0.5
    assert b.take("a") == 0 and b.take("a") > 0
    now[0] += 10.0  # refills to the burst, not beyond
    assert [b.take("a") for _ in range(3)][:2] == [0, 0] and b.take("a") > 0
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(rate=0, burst=1)


def test_page_is_self_contained(client):
    r = client.get("/")
    assert r.status_code == 200 and b"jitkit" in r.data
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    assets = re.findall(r'(?:src|href)="([^"]+)"', r.get_data(as_text=True))
    assert assets and all(a.startswith("/static/") for a in assets)
    for a in assets:
        assert client.get(a).status_code == 200
    for f in STATIC.iterdir():
        text = f.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace, not a fetch
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), f"external URL in {f.name}"
        assert "@import" not in text


def test_create_app_rejects_bad_setup(model):
    den, cfg = model
    with pytest.raises(ValueError, match="class"):
        create_app(den, cfg, [])
    with pytest.raises(ValueError, match="num_classes=4"):
        create_app(den, cfg, CLASSES + ["purple_blob"])
    with pytest.raises(ValueError, match="steps_range"):
        create_app(den, cfg, CLASSES, steps_range=(5, 2))


# --- the jitkit demo command and its model cache ----------------------------------------------------------


def test_cli_registers_demo():
    from jitkit.cli import build_parser

    args = build_parser().parse_args(["demo", "some/run", "--port", "0", "--open"])
    assert args.command == "demo" and args.run == "some/run" and args.port == 0 and args.open
    assert args.host == "127.0.0.1"


def test_cache_dir_follows_xdg(monkeypatch, tmp_path):
    from jitkit.demo.model import default_cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "jitkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "jitkit"


def test_shapes_model_is_trained_once_then_cached(tmp_path):
    from jitkit.demo.model import cached_run_dir, ensure_shapes_model

    calls = []

    def fake_train(cfg, callbacks):
        calls.append(cfg)
        run = Path(cfg.train.out)
        (run / "checkpoints" / "last").mkdir(parents=True)
        (run / "checkpoints" / "last" / "model.safetensors").write_bytes(b"x")
        for cb in callbacks:
            cb("end", {"run_dir": run})
        return run

    logs: list[str] = []
    run = ensure_shapes_model(tmp_path, train_fn=fake_train, log=logs.append)
    assert run == cached_run_dir(tmp_path) and (run / "checkpoints" / "last" / "model.safetensors").exists()
    assert len(calls) == 1 and calls[0].model.name == "JiT-T/4" and calls[0].data.data == "shapes"
    assert logs and "training" in logs[0]
    assert ensure_shapes_model(tmp_path, train_fn=fake_train, log=logs.append) == run
    assert len(calls) == 1  # cached
    assert sorted(p.name for p in tmp_path.iterdir()) == [run.name]  # no partial folders left
    # another training config is another cache entry
    other = ensure_shapes_model(tmp_path, overrides={"train.epochs": 1}, train_fn=fake_train, log=logs.append)
    assert other != run and len(calls) == 2 and calls[1].train.epochs == 1
    assert cached_run_dir(tmp_path, {"train.epochs": 1}) == other


def test_interrupted_training_leaves_no_cached_model(tmp_path):
    from jitkit.demo.model import cached_run_dir, ensure_shapes_model

    def crashing_train(cfg, callbacks):
        Path(cfg.train.out).mkdir(parents=True)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_model(tmp_path, train_fn=crashing_train, log=lambda s: None)
    assert not cached_run_dir(tmp_path).exists() and list(tmp_path.iterdir()) == []

    def stopped_train(cfg, callbacks):  # Ctrl-C: the trainer saves a checkpoint and returns without "end"
        last = Path(cfg.train.out) / "checkpoints" / "last"
        last.mkdir(parents=True)
        (last / "model.safetensors").write_bytes(b"x")
        return Path(cfg.train.out)

    logs: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        ensure_shapes_model(tmp_path, train_fn=stopped_train, log=logs.append)
    assert "nothing was cached" in logs[-1]
    assert not cached_run_dir(tmp_path).exists() and list(tmp_path.iterdir()) == []


def _save_tiny_run(tiny, root: Path):
    from jitkit.checkpoint import save_checkpoint
    from jitkit.config import preset_dict, resolve_run_config

    den, mcfg = tiny_demo_model(tiny, seed=1)
    d = preset_dict("shapes")
    d["model"] = mcfg.to_dict()
    d["sampler"]["steps"] = 7
    rc = resolve_run_config(d)
    sd = den.state_dict()
    save_checkpoint(root / "checkpoints" / "last", config=rc, classes=CLASSES, model=sd, ema1=sd, ema2=sd)
    return root, den


def test_cli_serves_a_named_run(tiny, tmp_path, monkeypatch):
    import jitkit.demo.server as server_mod
    from jitkit.cli import main

    run, den = _save_tiny_run(tiny, tmp_path / "run")
    served = {}
    monkeypatch.setattr(server_mod, "serve", lambda app, **kw: served.update(app=app, **kw))
    assert main(["demo", str(run), "--port", "0", "--max-steps", "9"]) == 0
    assert served["host"] == "127.0.0.1" and served["port"] == 0 and served["open_browser"] is False
    c = served["app"].test_client()
    info = c.get("/api/info").get_json()
    assert info["classes"] == CLASSES and info["steps_range"] == [1, 9] and info["defaults"]["steps"] == 7
    # the checkpoint's sampler defaults (cfg 2 in the shapes preset) are the page's defaults
    assert info["defaults"]["cfg"] == 2.0 and info["precision"] == "fp32"  # auto on the CPU
    req = {"seed": 5, "steps": 3, "cfg": 3.0}
    got = c.post("/api/sample", json=req).get_json()
    # the same run sampled from the in-memory model that was saved
    ref = create_app(den, den.net.cfg, CLASSES, sampler=SamplerConfig(method=info["defaults"]["sampler"]))
    ref = ref.test_client().post("/api/sample", json=req)
    assert got["final"] == ref.get_json()["final"]


def test_cli_without_a_run_uses_the_cached_shapes_model(tiny, tmp_path, monkeypatch):
    import jitkit.demo.model as model_mod
    import jitkit.demo.server as server_mod
    from jitkit.cli import main

    run, _ = _save_tiny_run(tiny, tmp_path / "cache" / "whatever")
    asked = {}

    def fake_ensure(cache_dir, *, retrain, overrides):
        asked.update(cache_dir=cache_dir, retrain=retrain, overrides=overrides)
        return run

    monkeypatch.setattr(model_mod, "ensure_shapes_model", fake_ensure)
    monkeypatch.setattr(server_mod, "serve", lambda app, **kw: None)
    assert main(["demo", "--cache-dir", str(tmp_path / "cache"), "--epochs", "3"]) == 0
    assert asked == {"cache_dir": str(tmp_path / "cache"), "retrain": False, "overrides": {"train.epochs": 3}}


def test_cli_reports_a_missing_run(tmp_path, capsys):
    from jitkit.cli import main

    assert main(["demo", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "jitkit demo: error:" in err and "expected a run folder" in err


def test_jitkit_demo_command_serves_the_page(tiny, tmp_path):
    """The real command in a subprocess: prints its address, binds 127.0.0.1, answers the API."""
    import json
    import subprocess
    import sys
    import urllib.request

    run, _ = _save_tiny_run(tiny, tmp_path / "run")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jitkit", "demo", str(run), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        for line in proc.stdout:  # until the address line (or the process ends)
            lines.append(line)
            if "serving on" in line:
                break
        m = re.search(r"serving on (http://127\.0\.0\.1:(\d+)/)", "".join(lines))
        assert m, "".join(lines)
        with urllib.request.urlopen(m.group(1) + "api/info", timeout=30) as r:
            info = json.loads(r.read())
        assert info["classes"] == CLASSES and info["grid_size"] == 4
        with urllib.request.urlopen(m.group(1), timeout=30) as r:
            assert b"jitkit" in r.read()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_busy_port_is_a_clear_error(tiny, model, tmp_path, capsys):
    import socket

    from jitkit.cli import main
    from jitkit.demo.server import PortUnavailable, serve

    den, cfg = model
    run, _ = _save_tiny_run(tiny, tmp_path / "run")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        with pytest.raises(PortUnavailable, match=f"cannot listen on 127.0.0.1:{port}") as e:
            serve(create_app(den, cfg, CLASSES), port=port)
        assert "choose another port" in str(e.value) and "--port" not in str(e.value)
        assert main(["demo", str(run), "--port", str(port)]) == 2  # the CLI names its flag
        assert f"--port {port}: cannot listen" in capsys.readouterr().err


# --- the recorded run is the library's sampler --------------------------------------------------------------


@pytest.mark.parametrize("method,cfg", [("heun", 1.0), ("euler", 2.5)])
def test_recorded_run_is_sample_denoiser_for_the_same_seed_and_class(model, method, cfg):
    den, mcfg = model
    scfg = SamplerConfig(method=method, steps=5, cfg=cfg, interval=(0.1, 0.9))
    run = record_run(den, class_index=2, seed=9, sampler=scfg, img_size=16, precision="fp32")
    z0 = initial_noise(1, (3, 16, 16), den.cfg.noise_scale, seed=9)
    final = sample_denoiser(den, z0, torch.tensor([2]), scfg)
    assert np.array_equal(run.final, to_uint8(final)[0].permute(1, 2, 0).numpy())
    assert run.scale == [cfg if 0.1 < t < 0.9 else 1.0 for t in run.t[:-1]]
    # "auto" is fp32 on the CPU: the same run
    auto = record_run(den, class_index=2, seed=9, sampler=scfg, img_size=16)
    assert np.array_equal(auto.z, run.z) and np.array_equal(auto.x, run.x)


def test_recorded_run_in_bf16_stays_close_to_fp32(model):
    den, _ = model
    scfg = SamplerConfig(method="heun", steps=6, cfg=2.0)
    runs = {
        p: record_run(den, class_index=1, seed=4, sampler=scfg, img_size=16, precision=p)
        for p in ("fp32", "bf16")
    }
    a, b = (runs[p].final.astype(int) for p in ("fp32", "bf16"))
    assert not np.array_equal(runs["fp32"].x, runs["bf16"].x)  # bf16 did run
    assert np.abs(a - b).mean() < 1.5 and np.abs(a - b).max() <= 8  # uint8 levels (about 0.35 and 2 here)
    assert runs["bf16"].t == runs["fp32"].t and runs["bf16"].nfe == runs["fp32"].nfe


def test_cli_precision_reaches_the_recorded_run(tiny, tmp_path, monkeypatch, capsys):
    import jitkit.demo.server as server_mod
    from jitkit.cli import main

    run, den = _save_tiny_run(tiny, tmp_path / "run")
    served = {}
    monkeypatch.setattr(server_mod, "serve", lambda app, **kw: served.update(app=app))
    assert main(["demo", str(run), "--port", "0", "--precision", "bf16"]) == 0
    c = served["app"].test_client()
    assert c.get("/api/info").get_json()["precision"] == "bf16"
    got = c.post("/api/sample", json={"seed": 5, "steps": 3, "cfg": 3.0, "class": 1}).get_json()
    scfg = SamplerConfig(method=got["sampler"], steps=3, cfg=3.0, interval=tuple(got["interval"]))
    expected = record_run(den, class_index=1, seed=5, sampler=scfg, img_size=16, precision="bf16")
    assert base64.b64decode(got["final"]) == expected.final.tobytes()
    fp32 = record_run(den, class_index=1, seed=5, sampler=scfg, img_size=16, precision="fp32")
    assert expected.x.tobytes() != fp32.x.tobytes()
    # no fp16 on the CPU: said before the built-in model would be trained
    import jitkit.demo.model as model_mod

    monkeypatch.setattr(model_mod, "ensure_shapes_model", lambda *a, **k: pytest.fail("trained first"))
    assert main(["demo", "--precision", "fp16", "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "fp16 is not supported on CPU" in capsys.readouterr().err


# -- start from a data image --------------------------------------------------------------------------------


@pytest.fixture()
def data_client(model):
    den, cfg = model
    g = np.random.default_rng(0)
    images = g.integers(0, 256, size=(3, 3, 16, 16), dtype=np.uint8)
    app = create_app(
        den,
        cfg,
        CLASSES,
        sampler=SamplerConfig(steps=6, cfg=1.0),
        data_images=(images, [0, 2, 3]),
        burst=1000,
    )
    return app.test_client(), images


def test_info_lists_the_data_images_by_class(data_client):
    c, _ = data_client
    assert c.get("/api/info").get_json()["data_images"] == ["red_circle", "blue_triangle", "yellow_cross"]


def test_a_run_from_a_data_image_starts_at_its_inversion(data_client, model):
    from jitkit.diffusion.generate import invert_denoiser

    c, images = data_client
    den, _ = model
    d = c.post(
        "/api/sample", json={"image": 1, "class": "blue_triangle", "steps": 6, "sampler": "dpm++2m"}
    ).get_json()
    assert d["image"] == 1 and d["source_class"] == "blue_triangle" and d["inversion_nfe"] == 2 * 2 * 6
    src = np.frombuffer(base64.b64decode(d["source"]), np.uint8).reshape(16, 16, 3)
    assert np.array_equal(src, images[1].transpose(1, 2, 0))
    # the first frame is the inverted noise, computed the library's way
    x = torch.from_numpy(images[1][None].astype(np.float32) / 127.5 - 1.0)
    z0 = invert_denoiser(
        den, x, torch.tensor([2]), SamplerConfig(method="dpm++2m", steps=6, cfg=1.0), iters=2
    )
    assert np.array_equal(frames(d, "z")[0], to_uint8(z0)[0].permute(1, 2, 0).numpy())
    final = frames(d, "z")[-1].astype(np.float64)
    assert d["source_rms"] == pytest.approx(np.sqrt((((final - src) / 127.5) ** 2).mean()), rel=1e-6)
    # another class from the same image: the same start, another end
    e = c.post(
        "/api/sample", json={"image": 1, "class": "red_circle", "steps": 6, "sampler": "dpm++2m"}
    ).get_json()
    assert e["z"][0] == d["z"][0] and e["final"] != d["final"]


def test_a_run_from_a_data_image_with_a_corrector_solver_uses_its_predictor(data_client):
    c, _ = data_client
    kw = {"image": 1, "class": "blue_triangle", "steps": 6}
    pc = c.post("/api/sample", json={**kw, "sampler": "dpm++2m-pc"})
    assert pc.status_code == 200
    # inverted and regenerated with dpm++2m: the very frames of a dpm++2m request
    assert pc.get_json()["z"] == c.post("/api/sample", json={**kw, "sampler": "dpm++2m"}).get_json()["z"]


@pytest.mark.parametrize(
    "image,needle", [(3, "image must lie in [0, 2], found 3"), ("x", "image must be an integer")]
)
def test_bad_data_image_index_is_a_400(data_client, image, needle):
    c, _ = data_client
    r = c.post("/api/sample", json={"image": image})
    assert r.status_code == 400 and needle in r.get_json()["error"]


def test_no_data_images_means_no_image_parameter(client):
    r = client.post("/api/sample", json={"image": 0})
    assert r.status_code == 400 and "no data images" in r.get_json()["error"]
    assert client.post("/api/sample", json={"image": -1, "steps": 2}).status_code == 200  # -1: from the seed


def test_data_images_of_the_wrong_shape_are_refused(model):
    den, cfg = model
    with pytest.raises(ValueError, match=r"data_images must be uint8 images \[M, 3, 16, 16\]"):
        create_app(den, cfg, CLASSES, data_images=(np.zeros((2, 3, 8, 8), np.uint8), [0, 1]))
