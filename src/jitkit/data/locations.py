"""Where shards live: local paths and ``http://`` / ``https://`` / ``file://`` URLs, opened the same way.

A location is a local :class:`~pathlib.Path` or a remote URL string (``file://`` URLs become local paths,
so they get the local checks). :func:`open_shard` turns either into a binary stream; the readers of
:mod:`jitkit.data.webdataset` never ask which one they hold, except to choose the checks a download allows.

Opening a URL is retried on what is usually transient — HTTP 429, 500, 502, 503, 504, a refused or reset
connection, a time-out — ``RETRIES`` times with a doubling pause from ``BACKOFF`` seconds; any other answer
(404, 403, …) fails at once. A failure in the middle of a stream is not retried (the reader names the shard).
"""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.parse
import urllib.request
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

REMOTE = ("http://", "https://")
TIMEOUT = 60.0  # seconds without an answer before a request fails (urllib's per-operation timeout)
RETRIES = 3  # further attempts to open a URL after a transient failure
BACKOFF = 1.0  # seconds before the first retry; doubled before each next one
TRANSIENT_HTTP = (429, 500, 502, 503, 504)


class UnreadableLocation(FileNotFoundError):
    """A location that cannot be read: HTTP error status, unreachable host, time-out, missing file."""


def is_url(name: str | os.PathLike) -> bool:
    return str(name).strip().lower().startswith(REMOTE + ("file://",))


def is_remote(loc) -> bool:
    return isinstance(loc, str) and loc.lower().startswith(REMOTE)


def location(name: str | os.PathLike, relative_to: Path | None = None):
    """``name`` as a location: the URL string for http(s), else a local Path (``file://`` URLs decoded;
    relative paths taken from ``relative_to`` when given)."""
    s = str(name).strip()
    if is_remote(s):
        return s
    if s.lower().startswith("file://"):
        u = urllib.parse.urlparse(s)
        if u.netloc not in ("", "localhost"):
            raise ValueError(
                f"{s}: a file:// URL names a file on this host (file:///PATH), found host {u.netloc!r}"
            )
        return Path(urllib.request.url2pathname(u.path))
    p = Path(s).expanduser()
    return relative_to / p if relative_to is not None and not p.is_absolute() else p


def parent(loc):
    """The folder of a location (a URL's ends in ``/``)."""
    if is_remote(loc):
        return loc.rsplit("/", 1)[0] + "/"
    return loc.parent


def child(folder, name: str):
    """``name`` inside the folder location ``folder``."""
    if is_remote(folder):
        return folder if not name else (folder if folder.endswith("/") else folder + "/") + name
    return folder / name


def basename(loc) -> str:
    return loc.rsplit("/", 1)[-1] if is_remote(loc) else loc.name


def _request(url: str):
    """The response to GET ``url``; transient failures retried (module docstring), others raised at once."""
    for attempt in range(RETRIES + 1):
        try:
            return urllib.request.urlopen(urllib.request.Request(url), timeout=TIMEOUT)
        except urllib.error.HTTPError as e:
            e.close()  # the standard phrase: servers word (or omit, in HTTP/2) their own differently
            phrase = HTTPStatus(e.code).phrase if e.code in HTTPStatus._value2member_map_ else e.reason
            why, transient = f"HTTP {e.code} {phrase}", e.code in TRANSIENT_HTTP
        except urllib.error.URLError as e:
            why, transient = str(e.reason), True
        except TimeoutError:
            why, transient = f"no answer within {TIMEOUT:g} s", True
        if not transient:
            raise UnreadableLocation(f"cannot read {url}: {why}")
        if attempt < RETRIES:
            time.sleep(BACKOFF * 2**attempt)
    raise UnreadableLocation(f"cannot read {url}: {why} ({RETRIES + 1} attempts)")


def open_shard(loc) -> BinaryIO:
    """A binary stream of the file at ``loc`` (a local path, or an HTTP(S) response read as it arrives).
    Raises :class:`UnreadableLocation` with one line naming the location and the reason."""
    if is_remote(loc):
        return _request(loc)
    try:
        return open(loc, "rb", buffering=0)
    except OSError as e:
        raise UnreadableLocation(f"cannot read {loc}: {e.strerror or e}") from None


def read_bytes(loc) -> bytes:
    """The whole file at ``loc`` (for manifests and lists: small)."""
    with open_shard(loc) as f:
        try:
            return f.read()
        except (OSError, TimeoutError) as e:
            raise UnreadableLocation(f"cannot read {loc}: {e}") from None


def stream_size(f) -> int | None:
    """The size in bytes of what ``f`` (from :func:`open_shard`) will deliver: a local file's size, an HTTP
    response's Content-Length, or None when the server sends none."""
    headers = getattr(f, "headers", None)
    if headers is None:
        return os.fstat(f.fileno()).st_size
    n = headers.get("Content-Length")
    return int(n) if n is not None and n.strip().isdigit() else None
