"""WebDataset shards (data/webdataset.py): prepare → shards + manifest, resume, pixels equal to the cache's, the
exactly-once rule over 2 gloo ranks × 2 DataLoader workers, training on shards, and bad input."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import run_ranks
from PIL import Image

from jitkit.cli import main
from jitkit.data.cache import open_cache, prepare_cache
from jitkit.data.folder import scan_folder
from jitkit.data.webdataset import ShardMismatch, epoch_slots, open_shards
from jitkit.data.webdataset_write import prepare_shards

CLASSES = ["ant", "bee", "cat"]


def _images(root: Path, per_class: int = 5, bad: bool = True) -> Path:
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            # odd sizes: the crop resizes and cuts
            Image.fromarray(rng.integers(0, 256, (19 + i, 23, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    if bad:
        (root / "bee" / "broken.png").write_bytes(b"not an image")
    return root


def _prepare(src: Path, out: Path, **kw) -> Path:
    return prepare_shards(src, 8, out, shard_size=4, workers=1, progress=False, **kw)


def _all_samples(ds) -> dict[str, tuple[np.ndarray, int]]:
    got = {}
    for x, y, keys in ds.stream(0, 0, rank=0, world=1, micro=3, workers=0):
        for img, label, k in zip(x.numpy(), y.tolist(), keys):
            assert k not in got
            got[k] = (img, label)
    return got


def test_prepare_writes_shards_and_manifest_and_resumes(tmp_path):
    src = _images(tmp_path / "img")
    out = _prepare(src, tmp_path / "sh")
    man = json.loads((out / "manifest.json").read_text())
    assert man["format"] == "jitkit-webdataset" and man["count"] == 15 and man["classes"] == CLASSES
    assert man["size"] == 8 and man["image_format"] == "png"
    assert [e["name"] for e in man["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]  # 16 files / 4
    assert sum(e["count"] for e in man["shards"]) == 15 and man["skipped"][0][0] == os.path.join(
        "bee", "broken.png"
    )
    for e in man["shards"]:
        data = (out / e["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == e["sha256"] and len(data) == e["bytes"]
    assert not (out / "manifest.partial.json").exists()
    # each sample: KEY.png + KEY.cls, every class spread over the shards
    import tarfile

    with tarfile.open(out / "shard-000000.tar") as t:
        names = t.getnames()
    assert all(n.endswith((".png", ".cls")) for n in names) and len(names) == 2 * man["shards"][0]["count"]

    # an interrupted prepare: manifest.json not yet written, shard 2 missing, shard 3 damaged
    partial = {
        "plan_id": man["plan_id"],
        "source": man["source"],
        "size": 8,
        "shards": {str(i): dict(e, skipped=[]) for i, e in enumerate(man["shards"])},
    }
    partial["shards"]["1"]["skipped"] = [[os.path.join("bee", "broken.png"), "not an image"]]
    (out / "manifest.partial.json").write_text(json.dumps(partial))
    (out / "manifest.json").unlink()
    (out / "shard-000002.tar").unlink()
    (out / "shard-000003.tar").write_bytes(b"\0" * 512)
    kept = {i: (out / f"shard-{i:06d}.tar").stat().st_mtime_ns for i in (0, 1)}
    os.utime(out / "shard-000000.tar", ns=(1, 1))  # a rewrite would change these times
    os.utime(out / "shard-000001.tar", ns=(1, 1))
    _prepare(src, out)
    man2 = json.loads((out / "manifest.json").read_text())
    assert [e["sha256"] for e in man2["shards"]] == [e["sha256"] for e in man["shards"]]
    assert all((out / f"shard-{i:06d}.tar").stat().st_mtime_ns == 1 for i in kept)  # skipped, not rewritten
    assert man2["count"] == 15 and len(man2["skipped"]) == 1


def test_shards_hold_the_same_pixels_as_the_cache(tmp_path):
    src = _images(tmp_path / "img")
    ds = open_shards(_prepare(src, tmp_path / "sh"))
    cache = open_cache(prepare_cache(src, 8, tmp_path / "cache", workers=1, progress=False))
    rel = [os.path.relpath(f, scan_folder(src).root) for f in scan_folder(src).files]
    row_of = {
        r.decode(): i for i, r in enumerate((tmp_path / "cache" / "sources.txt").read_bytes().splitlines())
    }
    got = _all_samples(ds)
    assert len(got) == len(cache) == len(ds) == 15
    for key, (img, label) in got.items():
        row = row_of[rel[int(key)]]  # KEY is the index in the folder's sorted file list
        assert np.array_equal(img, cache.images[row].numpy()) and label == int(cache.labels[row])


def test_jpeg_shards_decode_close_to_the_crop(tmp_path):
    src = _images(tmp_path / "img", bad=False)
    ds = open_shards(
        prepare_shards(
            src, 8, tmp_path / "sh", shard_size=8, image_format="jpeg", quality=95, workers=1, progress=False
        )
    )
    png = _all_samples(open_shards(_prepare(src, tmp_path / "png")))
    for key, (img, label) in _all_samples(ds).items():
        assert label == png[key][1]
        assert np.abs(img.astype(int) - png[key][0].astype(int)).mean() < 20  # lossy but the same image


def test_epoch_slots_cover_every_sample_once():
    counts = [4, 4, 3, 0, 5]
    for world, workers in [(1, 1), (2, 2), (3, 2), (4, 3)]:
        for epoch in (0, 1):
            seen = [
                (i, j)
                for slot in epoch_slots(counts, 7, epoch, world, workers)
                for i, lo, hi in slot
                for j in range(lo, hi)
            ]
            assert sorted(seen) == [(i, j) for i, c in enumerate(counts) for j in range(c)]
    orders = [epoch_slots(counts, 7, e, 2, 2) for e in range(4)]
    # the shard order changes with the epoch (5 shards have 120 orders: two epochs may share one)
    assert len({repr(o) for o in orders}) > 1
    assert orders[0] == epoch_slots(counts, 7, 0, 2, 2)  # and is the same when asked again


_RANK = textwrap.dedent(
    """
    import datetime, json, sys, torch
    import torch.distributed as tdist
    from jitkit.data.webdataset import open_shards
    from jitkit.runtime import dist
    torch.set_num_threads(1)
    rank, world, _ = dist.env_world()
    tdist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    ds = open_shards(sys.argv[1])
    epochs = []
    for epoch in (0, 1):
        keys = [k for _, _, ks in ds.stream(epoch, 3, rank=rank, world=world, micro=2, workers=2) for k in ks]
        every = [None] * world
        tdist.all_gather_object(every, keys)
        epochs.append(every)
    if rank == 0:
        print("KEYS " + json.dumps(epochs))
    tdist.destroy_process_group()
    """
)


def test_two_ranks_two_workers_see_every_sample_once_per_epoch(tmp_path):
    sh = _prepare(_images(tmp_path / "img", per_class=6, bad=False), tmp_path / "sh")  # 18 in shards of 4
    (tmp_path / "logs").mkdir()
    res = run_ranks(lambda r: [sys.executable, "-c", _RANK, str(sh)], 2, tmp_path / "logs", timeout=90)
    for r, (rc, _, err) in enumerate(res):
        assert rc == 0, f"rank {r} failed:\n{err[-3000:]}"
    epochs = json.loads(next(ln for ln in res[0][1].splitlines() if ln.startswith("KEYS "))[5:])
    everything = sorted(f"{i:08d}" for i in range(18))
    for ranks in epochs:
        assert sorted(k for keys in ranks for k in keys) == everything  # each sample exactly once
        assert abs(len(ranks[0]) - len(ranks[1])) <= 1  # balanced
    assert epochs[0] != epochs[1]  # another order (and split) in the next epoch


def _quiet_main(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(list(argv))
    return rc, err.getvalue()


def _train_tiny(tiny, data: str, out: Path) -> tuple[int, str]:
    """One epoch of the tiny model on 8 px shards ``data`` (batch 4 × 2, 2 DataLoader workers)."""
    model = [f"model.{k}={v}" for k, v in tiny.MODEL.items() if k not in ("name", "num_classes", "img_size")]
    sets = [a for kv in model + ["sampler.steps=2", "train.ema_decay1=0.9"] for a in ("--set", kv)]
    return _quiet_main(
        "train",
        "--data",
        data,
        "--img-size",
        "8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--accum-steps",
        "2",
        "--workers",
        "2",
        "--threads",
        "1",
        "--out",
        str(out),
        "--no-progress",
        "--no-eval",
        *sets,
    )


def test_jitkit_train_on_shards(tmp_path, tiny):
    src = _images(tmp_path / "img", per_class=6, bad=False)
    rc, err = _quiet_main(
        "prepare",
        "--data",
        str(src),
        "--format",
        "webdataset",
        "--shard-size",
        "5",
        "--size",
        "8",
        "--out",
        str(tmp_path / "sh"),
        "--workers",
        "1",
    )
    assert rc == 0, err
    rc, err = _train_tiny(tiny, str(tmp_path / "sh"), tmp_path / "run")
    assert rc == 0, err
    from jitkit.checkpoint import load_checkpoint

    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 18 // 8 and ck.classes == CLASSES


def test_tampered_shard_is_refused_naming_it(tmp_path, monkeypatch):
    sh = _prepare(_images(tmp_path / "img", bad=False), tmp_path / "sh")
    p = sh / "shard-000001.tar"
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF  # inside the first image, same size
    p.write_bytes(bytes(data))
    with pytest.raises(ShardMismatch, match="shard-000001.tar: sha256 does not match"):
        open_shards(sh)
    # large shard sets are checked lazily: each shard when a worker has read it
    import jitkit.data.webdataset as wd

    monkeypatch.setattr(wd, "FULL_VERIFY_BYTES", 0)
    ds = open_shards(sh)
    with pytest.raises(Exception, match="shard-000001.tar: sha256 does not match"):
        _all_samples(ds)
    (sh / "shard-000002.tar").write_bytes(b"short")
    with pytest.raises(ShardMismatch, match="shard-000002.tar.*holds 5 bytes"):
        open_shards(sh)


def test_bad_shard_input(tmp_path, monkeypatch):
    sh = _prepare(_images(tmp_path / "img", bad=False), tmp_path / "sh")
    two = open_shards(str(sh / "shard-{000000..000001}.tar"))  # a brace pattern beside the manifest
    assert len(two) == 8
    with pytest.raises(ShardMismatch, match="shard-000009.tar not listed"):
        open_shards(str(sh / "shard-{000008..000009}.tar"))
    bare = tmp_path / "bare"  # shards without their manifest
    bare.mkdir()
    (bare / "shard-000000.tar").write_bytes((sh / "shard-000000.tar").read_bytes())
    with pytest.raises(FileNotFoundError, match="expected a manifest.json beside them"):
        open_shards(bare)
    rc, err = _quiet_main("train", "--data", str(bare), "--out", str(tmp_path / "run"), "--no-progress")
    assert rc == 2 and "manifest.json" in err
    man = json.loads((sh / "manifest.json").read_text())
    (sh / "manifest.json").write_text(json.dumps(dict(man, shards=[])))
    with pytest.raises(ShardMismatch, match="found no shards"):
        open_shards(sh)
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(ImportError, match=r"pip install 'jitkit\[wds\]'"):
        open_shards(str(sh / "shard-000000.tar"))
    rc, err = _quiet_main(
        "prepare", "--data", str(tmp_path / "img"), "--out", str(tmp_path / "c"), "--shard-size", "3"
    )
    assert rc == 2 and "--format webdataset" in err


# --- shards over HTTP, file:// URLs and shard lists ---------------------------------------------------


@contextlib.contextmanager
def serving(handler):
    """A threaded stdlib HTTP server on 127.0.0.1 answering with ``handler``, for the block: its base URL."""
    import http.server
    import threading

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A server (:func:`serving`) of the folder tmp_path/www: (that folder, its URL)."""
    import functools
    import http.server

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    with serving(functools.partial(Quiet, directory=str(root))) as url:
        yield root, url


def _ordered(ds, epoch: int = 1, seed: int = 5, **kw) -> list[tuple[str, int, bytes]]:
    """(key, label, pixels) in the order rank 0 of ``world`` reads them in ``epoch``."""
    kw = {"rank": 0, "world": 1, "workers": 0, **kw}
    return [
        (k, label, img.tobytes())
        for x, y, keys in ds.stream(epoch, seed, micro=3, **kw)
        for img, label, k in zip(x.numpy(), y.tolist(), keys)
    ]


def test_shards_over_http_and_lists_read_as_the_local_folder(tmp_path, http_root):
    from jitkit.data.webdataset import is_shards

    root, url = http_root
    sh = _prepare(_images(tmp_path / "img", bad=False), root / "sh")  # 15 images in 4 shards
    local = open_shards(sh)
    want = _ordered(local)
    assert len(want) == 15
    urls = tmp_path / "urls.txt"  # a list of URLs, with a comment and a blank line
    urls.write_text("# the shards over HTTP\n\n" + "".join(f"{url}/sh/shard-{i:06d}.tar\n" for i in range(4)))
    rel = root / "rel.txt"  # a local list: relative to its own folder, brace patterns expanded
    rel.write_text("sh/shard-{000000..000001}.tar\n  sh/shard-000002.tar\n# last:\nsh/shard-000003.tar\n")
    names = [f"{url}/sh/", f"{url}/sh/shard-{{000000..000003}}.tar", str(urls), sh.as_uri() + "/", str(rel)]
    for name in names:
        assert is_shards(name)
        ds = open_shards(name)
        assert ds.remote == name.startswith("http") or name == str(urls)
        assert len(ds) == 15 and ds.classes == CLASSES and ds.img_size == 8
        assert _ordered(ds) == want, name  # same keys, labels and pixels in the same order
    # two ranks' shares through DataLoader workers: the same split over HTTP as on disk
    remote = open_shards(f"{url}/sh/")
    for rank in (0, 1):
        assert _ordered(remote, rank=rank, world=2, workers=2) == _ordered(
            local, rank=rank, world=2, workers=2
        )


def test_http_errors_are_one_line_naming_the_url(tmp_path, http_root):
    import re

    root, url = http_root
    sh = _prepare(_images(tmp_path / "img", bad=False), root / "sh")
    gone = f"cannot read {url}/nowhere/manifest.json: HTTP 404 Not Found"
    with pytest.raises(FileNotFoundError, match=re.escape(gone)):
        open_shards(f"{url}/nowhere/")
    rc, err = _quiet_main(
        "train", "--data", f"{url}/nowhere/", "--out", str(tmp_path / "run"), "--no-progress"
    )
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert rc == 2 and len(errors) == 1 and gone in errors[0], err
    with pytest.raises(ValueError, match=re.escape(f"did you mean {url}/sh/ ?")):
        open_shards(f"{url}/sh")  # a folder URL without its final /
    (sh / "shard-000002.tar").unlink()
    ds = open_shards(f"{url}/sh/")  # remote shards are not fetched when opening
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"cannot read {url}/sh/shard-000002.tar: HTTP 404 Not Found")
    ):
        _all_samples(ds)


def _flaky_server(files: dict[str, bytes], cuts: list[int], *, ranges: bool = True):
    """A handler serving ``files`` by path: its i-th answer for a path sends the headers of the whole (rest of
    the) file and only ``cuts[i]`` bytes of it, then drops the connection (answers past ``cuts``: the whole
    body); with ``ranges`` it answers ``Range: bytes=N-`` with 206 (honouring If-Range against its ETag),
    without them with the whole file (200). Returns the handler and the list of (path, Range) it was asked."""
    import http.server

    seen: list[tuple[str, str | None]] = []
    served: dict[str, int] = {}

    class Flaky(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            data = files.get(self.path)
            rng = self.headers.get("Range")
            seen.append((self.path, rng))
            if data is None:
                self.send_error(404)
                return
            etag = f'"{len(data)}-{data[:8].hex()}"'
            start = 0
            if ranges and rng and self.headers.get("If-Range", etag) == etag:
                start = int(rng.split("=")[1].rstrip("-"))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Content-Length", str(len(data) - start))
            self.send_header("ETag", etag)
            self.end_headers()
            body = data[start:]
            n = served.get(self.path, 0)
            served[self.path] = n + 1
            if n < len(cuts) and len(body) > cuts[n]:
                self.wfile.write(body[: cuts[n]])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)  # the connection lost mid-file
                return
            self.wfile.write(body)

    return Flaky, seen


def test_a_connection_lost_inside_a_shard_resumes_where_it_stopped(tmp_path, monkeypatch):
    """A shard whose connection drops mid-file is read on from the byte reached (Range: bytes=N-): the same
    samples as on disk. A server that cannot resume, or one that drops every time, ends with one line naming
    the URL and the byte reached."""
    import jitkit.data.locations as locations
    from jitkit.data.locations import UnreadableLocation, open_shard

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(locations, "BACKOFF", 0.0)
    sh = _prepare(_images(tmp_path / "img", bad=False), tmp_path / "sh")
    files = {f"/sh/{p.name}": p.read_bytes() for p in sh.iterdir()}
    name = "/sh/shard-000001.tar"
    handler, seen = _flaky_server(files, [700])
    with serving(handler) as url:
        with open_shard(url + name) as f:
            assert f.read() == files[name] and f.resumed == 1
        assert seen == [(name, None), (name, "bytes=700-")]
        seen.clear()
        assert _ordered(open_shards(f"{url}/sh/")) == _ordered(open_shards(sh))  # every shard cut once
        assert sum(1 for _, rng in seen if rng == "bytes=700-") == 4
    handler, _ = _flaky_server(files, [300] * 8)  # progress every time: as many resumes as it takes
    with serving(handler) as url, open_shard(url + name) as f:
        assert f.read() == files[name] and f.resumed == 8
    handler, _ = _flaky_server(files, [700], ranges=False)
    with serving(handler) as url, open_shard(url + name) as f:
        with pytest.raises(
            UnreadableLocation, match=r"shard-000001.tar: .* at byte 700, and the server did not"
        ):
            f.read()
    handler, _ = _flaky_server(files, [700, 0, 0, 0, 0])  # no progress after the first cut
    with serving(handler) as url, open_shard(url + name) as f:
        with pytest.raises(
            UnreadableLocation, match=r"shard-000001.tar: .*at byte 700; resumed 3 times in a row"
        ):
            f.read()


def test_tampered_shard_over_http_is_refused_naming_it(tmp_path, http_root):
    import re

    root, url = http_root
    sh = _prepare(_images(tmp_path / "img", bad=False), root / "sh")
    p = sh / "shard-000001.tar"
    data = bytearray(p.read_bytes())
    data[600] ^= 0xFF  # inside the first image, same size: only the checksum can tell
    p.write_bytes(bytes(data))
    ds = open_shards(f"{url}/sh/")  # not downloaded up front, even under 1 GiB
    assert ds.remote and ds.verify_lazily
    bad = f"shard {url}/sh/shard-000001.tar: sha256 does not match {url}/sh/manifest.json"
    with pytest.raises(ShardMismatch, match=re.escape(bad)):
        _all_samples(ds)
    with pytest.raises(ShardMismatch, match=re.escape(bad)):
        open_shards(f"{url}/sh/", verify="full")  # asked for: every shard downloaded and hashed once
    p.write_bytes(b"short")  # the server's Content-Length refuses it before reading
    with pytest.raises(ShardMismatch, match="shard-000001.tar.*holds 5 bytes"):
        _all_samples(open_shards(f"{url}/sh/"))


def test_a_list_naming_shards_its_manifest_does_not_list_is_refused(tmp_path, http_root):
    import re

    root, url = http_root
    _prepare(_images(tmp_path / "img", bad=False), root / "sh")
    lst = tmp_path / "shards.txt"
    lst.write_text(f"{url}/sh/shard-000000.tar\n{url}/sh/shard-000009.tar\n")
    with pytest.raises(
        ShardMismatch, match=r"shard-000009.tar not listed in .*/sh/manifest.json.*first entry"
    ):
        open_shards(str(lst))
    other = f"{url}/other/shard-000001.tar"  # listed by name, but beside another manifest
    lst.write_text(f"{url}/sh/shard-000000.tar\n{other}\n")
    with pytest.raises(ShardMismatch, match=re.escape(f"{other} not listed in {url}/sh/manifest.json")):
        open_shards(str(lst))
    lst.write_text(f"{url}/sh/shard-000000.tar\n{url}/sh/shard-000000.tar\n")
    with pytest.raises(ValueError, match="shard-000000.tar named more than once"):
        open_shards(str(lst))
    lst.write_text(f"{url}/none/shard-000000.tar\n")  # the manifest is looked for beside the first entry
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot read {url}/none/manifest.json: HTTP 404")):
        open_shards(str(lst))
    lst.write_text("# nothing yet\n\n")
    with pytest.raises(ShardMismatch, match="names no shards"):
        open_shards(str(lst))
    with pytest.raises(FileNotFoundError, match="shard list .*missing.txt: no such file"):
        open_shards(str(tmp_path / "missing.txt"))


def test_jitkit_train_on_shards_over_http(tmp_path, tiny, http_root):
    from jitkit.checkpoint import load_checkpoint

    root, url = http_root
    src = _images(tmp_path / "img", per_class=6, bad=False)
    prepare_shards(src, 8, root / "sh", shard_size=5, workers=1, progress=False)
    rc, err = _train_tiny(tiny, f"{url}/sh/", tmp_path / "run")
    assert rc == 0, err
    ck = load_checkpoint(tmp_path / "run")
    assert ck.step == 18 // 8 and ck.classes == CLASSES


@pytest.fixture
def flaky_server():
    """An HTTP server on 127.0.0.1 whose answers are scripted: ``codes`` is popped per request (200 serves
    ``body``); ``hits`` counts the requests."""
    import http.server

    state = {"codes": [], "hits": 0, "body": b"shard bytes"}

    class Scripted(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            state["hits"] += 1
            code = state["codes"].pop(0) if state["codes"] else 200
            data = state["body"] if code == 200 else b"{}"
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with serving(Scripted) as url:
        yield state, url + "/shard-000000.tar"


def test_opening_a_url_retries_transient_failures_only(flaky_server, monkeypatch):
    import re

    from jitkit.data import locations

    monkeypatch.setenv("no_proxy", "127.0.0.1")
    monkeypatch.setattr(locations, "BACKOFF", 0.0)
    state, url = flaky_server
    state["codes"] = [503, 502]  # two transient failures, then the file
    assert locations.read_bytes(url) == b"shard bytes" and state["hits"] == 3
    state["hits"], state["codes"] = 0, [404]  # not transient: one request, one line
    with pytest.raises(FileNotFoundError, match=re.escape(f"cannot read {url}: HTTP 404 Not Found")):
        locations.read_bytes(url)
    assert state["hits"] == 1
    state["hits"], state["codes"] = 0, [503] * 10  # still down after every retry: says how often it tried
    with pytest.raises(
        FileNotFoundError, match=re.escape(f"HTTP 503 Service Unavailable ({locations.RETRIES + 1} attempts)")
    ):
        locations.read_bytes(url)
    assert state["hits"] == locations.RETRIES + 1
