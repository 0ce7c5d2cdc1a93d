"""Where shards live: local paths and ``http://`` / ``https://`` / ``file://`` URLs, opened the same way.

A location is a local :class:`~pathlib.Path` or a remote URL string (``file://`` URLs become local paths,
so they get the local checks). :func:`open_shard` turns either into a binary stream; the readers of
:mod:`jitkit.data.webdataset` never ask which one they hold, except to choose the checks a download allows.

Opening a URL is retried on what is usually transient — HTTP 429, 500, 502, 503, 504, a refused or reset
connection, a time-out — ``RETRIES`` times with a doubling pause from ``BACKOFF`` seconds; any other answer
(404, 403, …) fails at once. A connection lost in the middle of a stream (reset, time-out, a body cut short)
is resumed where it stopped with an HTTP range request (``Range: bytes=N-``, ``If-Range`` on the first answer's
validator), ``RETRIES`` times in a row with the same pauses; a server that does not answer a range request
with that range (206 from byte N), or whose file changed meanwhile, ends the stream with one line naming the
URL and the byte reached.
"""

from __future__ import annotations

import http.client
import io
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


def _request(url: str, headers: dict[str, str] | None = None):
    """The response to GET ``url``; transient failures retried (module docstring), others raised at once."""
    for attempt in range(RETRIES + 1):
        try:
            return urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=TIMEOUT)
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


class ResumingResponse(io.RawIOBase):
    """An HTTP(S) response read as it arrives that resumes a lost connection from the byte it reached (module
    docstring). ``headers`` are the first answer's (its Content-Length is the file's size)."""

    def __init__(self, url: str, response) -> None:
        self.url, self._resp = url, response
        self.headers = response.headers
        n = self.headers.get("Content-Length")
        self.length = int(n) if n is not None and n.strip().isdigit() else None
        # the validator that makes a resumed range come from the same file (If-Range: else the whole file)
        self.validator = self.headers.get("ETag") or self.headers.get("Last-Modified")
        self.pos = 0
        self.resumed = 0  # how many times a lost connection was resumed

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        failures = 0
        while True:
            try:
                n = self._resp.readinto(b)
                if n or not len(b) or self.length is None or self.pos >= self.length:
                    self.pos += n
                    return n
                why = f"the connection closed after {self.pos:,} of {self.length:,} bytes"
            except (OSError, http.client.HTTPException) as e:  # reset, time-out, IncompleteRead
                why = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            if failures == RETRIES:
                raise UnreadableLocation(
                    f"cannot read {self.url}: {why} (at byte {self.pos:,}; resumed {RETRIES} times in a row)"
                )
            time.sleep(BACKOFF * 2**failures)
            failures += 1
            self._resume(why)

    def _resume(self, why: str) -> None:
        """Ask again from byte ``pos``; anything but that range of the same file ends the stream."""
        self._resp.close()
        headers = {"Range": f"bytes={self.pos}-"}
        if self.validator:
            headers["If-Range"] = self.validator
        resp = _request(self.url, headers)
        got = resp.headers.get("Content-Range", "")
        if resp.status != 206 or not got.startswith(f"bytes {self.pos}-"):
            resp.close()
            answer = f"HTTP {resp.status}" + (f", Content-Range {got!r}" if got else "")
            raise UnreadableLocation(
                f"cannot read {self.url}: {why} at byte {self.pos:,}, and the server did not resume it "
                f"(asked for bytes={self.pos}-, answered {answer}: no range support, or the file changed)"
            )
        self._resp = resp
        self.resumed += 1

    def close(self) -> None:
        if not self.closed:
            self._resp.close()
        super().close()


def open_shard(loc) -> BinaryIO:
    """A binary stream of the file at ``loc`` (a local path, or an HTTP(S) response read as it arrives and
    resumed where a lost connection left it: :class:`ResumingResponse`). Raises :class:`UnreadableLocation`
    with one line naming the location and the reason."""
    if is_remote(loc):
        return ResumingResponse(loc, _request(loc))  # type: ignore[return-value]
    try:
        return open(loc, "rb", buffering=0)
    except OSError as e:
        raise UnreadableLocation(f"cannot read {loc}: {e.strerror or e}") from None


def read_bytes(loc) -> bytes:
    """The whole file at ``loc`` (for manifests and lists: small)."""
    with open_shard(loc) as f:
        try:
            return f.read()
        except UnreadableLocation:
            raise
        except (OSError, TimeoutError) as e:
            raise UnreadableLocation(f"cannot read {loc}: {e}") from None


def stream_size(f) -> int | None:
    """The size in bytes of what ``f`` (from :func:`open_shard`) will deliver: a local file's size, an HTTP
    response's Content-Length, or None when the server sends none."""
    if isinstance(f, ResumingResponse):
        return f.length
    return os.fstat(f.fileno()).st_size
