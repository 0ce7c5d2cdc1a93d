"""hf:// checkpoints and jitkit push, offline: a small fake Hub on 127.0.0.1 answers the requests that
huggingface_hub's snapshot_download makes (repo info, recursive tree listing, HEAD/GET of /resolve/)."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
import torch

pytest.importorskip("huggingface_hub")

from jitkit.checkpoint import CheckpointError, load_checkpoint, load_denoiser, save_checkpoint  # noqa: E402
from jitkit.checkpoint.hub import parse_hub_spec, resolve_hub_path, stage_push  # noqa: E402
from jitkit.cli import main  # noqa: E402
from jitkit.config import RunConfig  # noqa: E402
from jitkit.eval.sample_folder import read_sample_folder  # noqa: E402

CLASSES = ["circle", "square", "triangle"]


class FakeHub:
    """repos: {repo_id: {"refs": {branch: commit}, "commits": {commit: {path: bytes}}}}; ``requests`` logs
    every (method, path) asked for."""

    def __init__(self) -> None:
        self.repos: dict[str, dict] = {}
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub.answer(self, body=False)

            def do_GET(self):
                hub.answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, repo_id: str, files: dict[str, bytes], branch: str = "main") -> str:
        commit = hashlib.sha1(repr(sorted(files.items())).encode() + branch.encode()).hexdigest()
        repo = self.repos.setdefault(repo_id, {"refs": {}, "commits": {}})
        repo["refs"][branch] = commit
        repo["commits"][commit] = dict(files)
        return commit

    def add_folder(self, repo_id: str, folder: Path, prefix: str = "", branch: str = "main", **extra) -> str:
        files = {
            prefix + str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        return self.add(repo_id, {**files, **extra}, branch)

    def _send(self, h, code, headers=None, data=b"", body=True):
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if body:
            h.wfile.write(data)

    def _error(self, h, code, error_code, body):
        self._send(
            h,
            code,
            {"X-Error-Code": error_code, "Content-Type": "application/json"},
            json.dumps({"error": error_code}).encode(),
            body,
        )

    def answer(self, h, body: bool) -> None:
        path = urlsplit(h.path).path
        self.requests.append((h.command, unquote(path)))
        parts = [unquote(x) for x in path.strip("/").split("/")]
        api = parts[:2] == ["api", "models"]
        if api:
            parts = parts[2:]
        if len(parts) < 4:
            return self._error(h, 404, "EntryNotFound", body)
        repo_id, kind, rev, rest = "/".join(parts[:2]), parts[2], parts[3], "/".join(parts[4:])
        repo = self.repos.get(repo_id)
        if repo is None:
            return self._error(h, 404, "RepoNotFound", body)
        commit = repo["refs"].get(rev, rev)
        if commit not in repo["commits"]:
            return self._error(h, 404, "RevisionNotFound", body)
        files = repo["commits"][commit]
        js = {"Content-Type": "application/json"}
        if api and kind == "revision":
            info = {"id": repo_id, "sha": commit, "siblings": [{"rfilename": f} for f in sorted(files)]}
            return self._send(h, 200, js, json.dumps(info).encode(), body)
        if api and kind == "tree":
            tree = [
                {"type": "file", "path": f, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                for f, b in sorted(files.items())
                if f.startswith(rest)
            ]
            return self._send(h, 200, js, json.dumps(tree).encode(), body)
        if not api and kind == "resolve":
            if rest not in files:
                return self._error(h, 404, "EntryNotFound", body)
            data = files[rest]
            head = {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
            return self._send(h, 200, head, data, body)
        return self._error(h, 404, "EntryNotFound", body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """A tiny run folder (8 px, 3 classes) with a last checkpoint, a sample grid and an eval.jsonl."""
    from PIL import Image

    r = tmp_path_factory.mktemp("hubrun") / "run"
    cfg = RunConfig.from_dict({**tiny.run_dict(r), "model": tiny.MODEL})
    den = tiny.denoiser(cfg.model)
    sd = {k: v.clone() for k, v in den.state_dict().items()}
    save_checkpoint(
        r / "checkpoints" / "last",
        config=cfg,
        classes=CLASSES,
        model=sd,
        ema1=sd,
        ema2=sd,
        meta={"step": 5, "epoch": 1},
    )
    (r / "config.json").write_text(json.dumps(cfg.to_dict()))
    (r / "classes.json").write_text(json.dumps(CLASSES))
    (r / "samples").mkdir()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(r / "samples" / "step-000005.png")
    lines = [
        {"event": "epoch", "step": 3, "metric": "shapes", "accuracy": 0.25},
        {"event": "end", "step": 5, "metric": "shapes", "accuracy": 0.5},
    ]
    (r / "eval.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return r


@pytest.fixture
def hub(run, tmp_path, monkeypatch):
    """The fake Hub with org/tiny (a pushed jitkit checkpoint; branch v2 holds it under ckpt/), org/diff (a
    diffusers export) and org/pickles (only a .bin), and huggingface_hub pointed at it with an empty cache."""
    import huggingface_hub.constants as C

    fake = FakeHub()
    staged = tmp_path / "staged"
    staged.mkdir()
    stage_push(run, staged, "org/tiny")
    fake.add_folder("org/tiny", staged)
    fake.add_folder("org/tiny", staged, prefix="ckpt/", branch="v2", **{"README.md": b"# v2\n"})
    diff = tmp_path / "diff"
    diff.mkdir()
    stage_push(run, diff, "org/diff", fmt="diffusers")
    fake.add_folder("org/diff", diff)
    fake.add(
        "org/pickles", {"config.json": b"{}", "pytorch_model.bin": b"\x80\x04not really", "README.md": b"x"}
    )
    home = tmp_path / "hf"
    for k, v in {"HF_ENDPOINT": fake.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub")}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("JITKIT_CACHE", raising=False)
    monkeypatch.setattr(C, "ENDPOINT", fake.url)
    monkeypatch.setattr(
        C, "HUGGINGFACE_CO_URL_TEMPLATE", fake.url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(C, "HF_HOME", str(home))
    monkeypatch.setattr(C, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(C, "HF_HUB_OFFLINE", False)
    yield fake
    fake.close()


def _sample(src, out: Path) -> np.ndarray:
    rc = main(["sample", str(src), "--num", "2", "--out", str(out), "--device", "cpu", "--no-progress"])
    assert rc == 0
    return read_sample_folder(out)[0]


def test_parse_hub_spec():
    r = parse_hub_spec("hf://org/repo@v1.0/runs/a")
    assert (r.repo_id, r.revision, r.subfolder) == ("org/repo", "v1.0", "runs/a")
    assert parse_hub_spec("hf://org/repo").revision is None
    assert parse_hub_spec("hf://org/repo@refs%2Fpr%2F1").revision == "refs/pr/1"
    assert str(parse_hub_spec("hf://org/repo/sub/")) == "hf://org/repo/sub"
    for bad in ("hf://org", "hf://org/", "hf:///repo", "hf://org/re po", "hf://org/repo@/x", "hf://o/r/../x"):
        with pytest.raises(ValueError, match="malformed Hub path"):
            parse_hub_spec(bad)


def test_sample_from_hub_matches_local_and_offline_uses_cache(hub, run, tmp_path, monkeypatch):
    local = _sample(run, tmp_path / "local")
    remote = _sample("hf://org/tiny", tmp_path / "remote")
    assert np.array_equal(local, remote)
    got = {p for _, p in hub.requests}
    assert "/org/tiny/resolve/" + hub.repos["org/tiny"]["refs"]["main"] + "/model.safetensors" in got
    # the library path too, and with HF_HUB_OFFLINE=1 the cache answers without any request
    import huggingface_hub.constants as C

    monkeypatch.setattr(C, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    n = len(hub.requests)
    den, cfg, classes = load_denoiser("hf://org/tiny")
    assert classes == CLASSES and cfg.model.img_size == 8
    want, _, _ = load_denoiser(run)
    assert all(torch.equal(a, b) for a, b in zip(den.state_dict().values(), want.state_dict().values()))
    assert len(hub.requests) == n
    # a revision never downloaded is not in the cache: one line naming the way out
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set.*no complete copy"):
        resolve_hub_path("hf://org/tiny@v2/ckpt")


def test_revision_and_subfolder(hub, run, tmp_path):
    folder = resolve_hub_path("hf://org/tiny@v2/ckpt")
    assert folder.name == "ckpt" and (folder / "model.safetensors").is_file()
    assert not (folder.parent / "README.md").exists()  # only the subfolder is downloaded
    ck = load_checkpoint("hf://org/tiny@v2/ckpt")
    assert ck.step == 5 and ck.classes == CLASSES
    assert np.array_equal(_sample("hf://org/tiny@v2/ckpt", tmp_path / "a"), _sample(run, tmp_path / "b"))
    with pytest.raises(FileNotFoundError, match="has no folder 'nope'"):
        resolve_hub_path("hf://org/tiny@v2/nope")


def test_diffusers_repo_loads_through_a_cached_run_folder(hub, run, tmp_path):
    den, cfg, classes = load_denoiser("hf://org/diff")
    want, _, _ = load_denoiser(run)
    assert classes == CLASSES and cfg.model.hidden_size == 32 and cfg.sampler.steps == 2
    assert all(torch.equal(a, b) for a, b in zip(den.state_dict().values(), want.state_dict().values()))
    converted = list((tmp_path / "jitkit" / "hub").iterdir())
    assert [p.name.split("@")[0] for p in converted] == ["org--diff"]
    n = len(list(converted[0].rglob("*")))
    load_denoiser("hf://org/diff")  # the second load reuses the converted folder
    assert len(list(converted[0].rglob("*"))) == n


def test_bad_hub_paths_are_one_line_errors(hub, tmp_path, capsys):
    cases = {
        "hf://org/missing": "repository org/missing not found",
        "hf://org/tiny@nobranch": "revision 'nobranch' does not exist",
        "hf://org/pickles": "refusing pytorch_model.bin: its only weights are pickles",
        "hf://org": "malformed Hub path",
    }
    for spec, msg in cases.items():
        rc = main(["sample", spec, "--num", "1", "--out", str(tmp_path / "x"), "--device", "cpu"])
        err = capsys.readouterr().err.strip()  # huggingface_hub's progress bars may come first
        last = err.splitlines()[-1]
        assert rc == 2 and last.startswith("jitkit sample: error: ") and msg in last, (spec, err)
        assert "Traceback" not in err
    assert not any(p.endswith(".bin") for _, p in hub.requests)


def test_no_network_and_empty_cache(hub, monkeypatch):
    import huggingface_hub.constants as C

    hub.close()  # nothing listens any more
    monkeypatch.setattr(C, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(
        FileNotFoundError, match="could not be reached.*huggingface-cli login.*HF_HUB_OFFLINE=1"
    ):
        resolve_hub_path("hf://org/tiny")


def test_missing_huggingface_hub_says_how_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(ValueError, match=r"pip install 'jitkit\[hub\]'"):
        resolve_hub_path("hf://org/tiny")


def test_sha256_recorded_and_verified(run, tmp_path):
    import shutil

    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "ema1.safetensors", "ema2.safetensors"}
    bad = tmp_path / "bad"
    shutil.copytree(run / "checkpoints" / "last", bad)
    from safetensors.torch import load_file, save_file

    sd = load_file(str(bad / "ema1.safetensors"))
    k = next(iter(sd))
    sd[k] = sd[k] + 1
    save_file(sd, str(bad / "ema1.safetensors"))
    with pytest.raises(
        CheckpointError, match=f"ema1.safetensors do not match.*expected {meta['sha256']['ema1.safetensors']}"
    ):
        load_checkpoint(bad)
    load_checkpoint(bad, lazy=True)  # lazy loads skip the hash


@pytest.mark.parametrize("fmt", ["jitkit", "diffusers"])
def test_push_uploads_checkpoint_and_model_card(run, monkeypatch, capsys, fmt):
    import huggingface_hub

    calls: dict = {}

    def create_repo(self, repo_id, **kw):
        calls["create"] = (repo_id, kw)

    def create_branch(self, repo_id, **kw):
        calls["branch"] = (repo_id, kw)

    def upload_folder(self, **kw):
        folder = Path(kw["folder_path"])
        calls["upload"] = kw
        calls["files"] = {
            str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
        }
        return "http://fake/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_branch", create_branch)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    rc = main(["push", str(run), "org/tiny", "--private", "--revision", "dev", "--format", fmt])
    assert rc == 0 and "jitkit sample hf://org/tiny@dev" in capsys.readouterr().out
    assert calls["create"] == ("org/tiny", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["branch"][1]["branch"] == "dev" and calls["upload"]["revision"] == "dev"
    files = calls["files"]
    common = {"README.md", "sample_grid.png"}
    if fmt == "jitkit":
        assert set(files) == common | {
            "meta.json",
            "model.safetensors",
            "ema1.safetensors",
            "ema2.safetensors",
            "config.json",
            "classes.json",
        }
        assert files["model.safetensors"] == (run / "checkpoints" / "last" / "model.safetensors").read_bytes()
    else:
        assert set(files) == common | {
            "model_index.json",
            "transformer/config.json",
            "scheduler/scheduler_config.json",
            "transformer/diffusion_pytorch_model.safetensors",
        }
    assert not any(f.endswith((".pt", ".bin")) for f in files)  # never the optimizer state
    card = files["README.md"].decode()
    assert card.startswith("---\nlibrary_name: jitkit\n")
    assert "jitkit sample hf://org/tiny" in card and 'load_denoiser("hf://org/tiny"' in card
    assert "| `hidden_size` | 32 |" in card and "| `steps` | 2 |" in card  # model and sampler config
    assert "| `accuracy` | 0.5 |" in card and "| `event` | end |" in card  # the last eval.jsonl line
    assert "![samples](sample_grid.png)" in card and "circle, square, triangle" in card


def test_push_refuses_bad_repo_id(run, capsys):
    assert main(["push", str(run), "not-a-repo"]) == 2
    assert "repo_id must be ORG/REPO" in capsys.readouterr().err


def test_resume_from_the_hub_trains_into_a_local_run(hub, tiny, tmp_path):
    """``jitkit train --resume hf://…`` continues from the Hub's checkpoint in a new local run under OUT; the
    download cache is never written to (training into it would corrupt the cached snapshot)."""
    from jitkit.train import train

    src = train(tiny.run_config(tmp_path / "src", epochs=1), progress=False)
    staged = tmp_path / "staged-trained"
    staged.mkdir()
    stage_push(src, staged, "org/trained")
    hub.add_folder("org/trained", staged)
    cache = tmp_path / "hf" / "hub"
    before = sorted(p.relative_to(cache) for p in cache.rglob("*")) if cache.exists() else []
    out = train(tiny.run_config(tmp_path / "cont", epochs=2), resume="hf://org/trained", progress=False)
    assert out == tmp_path / "cont"
    ck = load_checkpoint(out)
    first = load_checkpoint(src)
    assert ck.step == 2 * first.step and ck.meta["step"] == 2 * first.step
    logged = [json.loads(x)["step"] for x in (out / "log.jsonl").read_text().splitlines()]
    assert logged[0] == first.step + 1 and logged[-1] == ck.step  # continued, not restarted
    after = sorted(p.relative_to(cache) for p in cache.rglob("*"))
    snapshot = [p for p in after if p not in before]
    assert snapshot and not any("checkpoints" in p.parts or p.name == "log.jsonl" for p in snapshot)


def test_sample_asks_the_hub_once(hub, run, tmp_path):
    # jitkit sample reads the checkpoint's meta, then its weights: one resolution of hf:// serves both
    _sample("hf://org/tiny", tmp_path / "s")
    revisions = [p for _, p in hub.requests if p.startswith("/api/models/org/tiny/revision/")]
    assert len(revisions) == 1, hub.requests
