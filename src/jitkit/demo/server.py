"""The demo's web server (Flask): one page plus a small JSON API.

- ``GET /``            the page (static, self-contained: no CDN, no external assets)
- ``GET /api/info``    classes, image/patch/grid size, step range, samplers, defaults
- ``GET|POST /api/sample``  class, seed, steps, sampler, cfg → the whole trajectory in one response; with
  ``image`` (an index into the built-in data images) the run starts from that image's ODE inversion instead of
  the seed's noise: the image is inverted with its own class and the same sampler, then sampled forward with
  ``class`` (the same class reconstructs it; another one turns it into that class)

Every request is stateless: each call samples its own run from its own seed, so concurrent users never
share state; a lock serialises the model's forward passes. Bad parameters get a 400 with a JSON message,
requests are size-bounded (``MAX_CONTENT_LENGTH``) and rate-bounded per client (a token bucket → 429).
"""

from __future__ import annotations

import base64
import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flask import Flask, Response, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from jitkit.config import SAMPLERS, ModelConfig, SamplerConfig
from jitkit.demo.trajectory import record_run
from jitkit.diffusion.generate import invert_denoiser
from jitkit.diffusion.inversion import inversion_evaluations, invertible_method
from jitkit.runtime import resolve_precision

STATIC_DIR = Path(__file__).resolve().parent / "static"
SEED_MAX = 2**31 - 1
log = logging.getLogger("jitkit.demo")


class BadRequest(ValueError):
    """A request parameter the demo cannot use (answered with a 400 and this message)."""


class PortUnavailable(ValueError):
    """The server cannot listen on the address it was given (busy port, no permission, unknown host)."""


class TokenBucket:
    """Per-client token buckets: ``burst`` requests at once, refilled at ``rate`` per second.

    ``take(key)`` returns 0.0 when a token was taken, else the seconds until the next one.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate limit needs rate > 0 and burst >= 1, found rate={rate}, burst={burst}")
        self.rate, self.burst, self.clock = float(rate), int(burst), clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, key: str) -> float:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                wait = 0.0
            else:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
            if len(self._buckets) > 4096:  # forget clients whose bucket is full again
                full = [
                    k for k, (tk, ls) in self._buckets.items() if tk + (now - ls) * self.rate >= self.burst
                ]
                for k in full:
                    del self._buckets[k]
            return wait


# --- parameter parsing ------------------------------------------------------------------------------------


def _parse_int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], found {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], found {value!r}") from None
    if not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer in [{lo}, {hi}], found {value!r}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must lie in [{lo}, {hi}], found {value}")
    return value


def _parse_float(name: str, value: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool):
        raise BadRequest(f"{name} must be a number in [{lo:g}, {hi:g}], found {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise BadRequest(f"{name} must be a number in [{lo:g}, {hi:g}], found {value!r}") from None
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number in [{lo:g}, {hi:g}], found {value!r}")
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must lie in [{lo:g}, {hi:g}], found {value:g}")
    return float(value)


def _parse_class(value: Any, classes: list[str]) -> int:
    n = len(classes)
    if isinstance(value, str) and value in classes:
        return classes.index(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n:
        return value
    shown = ", ".join(classes[:8]) + (", …" if n > 8 else "")
    raise BadRequest(
        f"unknown class {value!r}: expected one of the {n} class names ({shown}) or an index 0..{n - 1}"
    )


# --- the app ----------------------------------------------------------------------------------------------


def create_app(
    denoiser: Any,
    model_config: ModelConfig,
    classes: list[str],
    *,
    sampler: SamplerConfig | None = None,
    steps_range: tuple[int, int] = (1, 50),
    cfg_max: float = 10.0,
    rate: float = 4.0,
    burst: int = 20,
    max_content_length: int = 4096,
    title: str = "jitkit demo",
    source: str = "",
    precision: str = "auto",
    data_images: tuple[Any, Any] | None = None,
    inversion_iters: int = 2,
) -> Flask:
    """A Flask app that serves the page and samples trajectories from ``denoiser`` (a jitkit Denoiser).

    ``sampler``: the defaults (method, steps, cfg, guidance interval; the checkpoint's sampler config).
    ``rate``/``burst``: the per-client token bucket of the API (requests per second / at once).
    ``source``: a short description of where the model came from, shown on the page.
    ``precision``: auto | fp32 | bf16 | fp16, the network's autocast while sampling (auto: bf16 on CUDA,
    fp32 elsewhere).
    ``data_images``: (uint8 images [M, C, S, S], labels [M]) the page may start from ("start from a data
    image"); ``inversion_iters``: fixed-point iterations per step of their inversion.
    """
    if len(classes) < 1:
        raise ValueError("the demo needs at least one class name, found none")
    if len(classes) > model_config.num_classes:
        raise ValueError(
            f"{len(classes)} class names for a model with num_classes={model_config.num_classes}; "
            "expected at most one name per class the model was trained on"
        )
    lo, hi = steps_range
    if not 1 <= lo <= hi:
        raise ValueError(f"steps_range must satisfy 1 <= low <= high, found {steps_range}")
    param = next(denoiser.parameters(), None)
    precision = resolve_precision(precision, param.device if param is not None else "cpu")
    sampler = sampler or SamplerConfig()
    default_steps = min(max(sampler.steps, lo), hi)
    default_cfg = min(max(float(sampler.cfg), 0.0), cfg_max)
    interval = (float(sampler.interval[0]), float(sampler.interval[1]))
    classes = list(classes)
    if data_images is not None:
        d_img, d_lab = np.asarray(data_images[0]), np.asarray(data_images[1], dtype=np.int64).reshape(-1)
        want = (model_config.in_channels, model_config.img_size, model_config.img_size)
        if (
            d_img.dtype != np.uint8
            or d_img.ndim != 4
            or tuple(d_img.shape[1:]) != want
            or len(d_lab) != len(d_img)
        ):
            raise ValueError(
                f"data_images must be uint8 images [M, {', '.join(map(str, want))}] and M labels, found "
                f"{d_img.dtype} {list(d_img.shape)} and {len(d_lab)} labels"
            )
        data_images = (d_img, d_lab)
    n_data = 0 if data_images is None else len(data_images[0])
    denoiser.eval()
    model_lock = threading.Lock()
    bucket = TokenBucket(rate, burst)

    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = max_content_length
    app.json.sort_keys = False  # type: ignore[attr-defined]

    info = {
        "title": title,
        "source": source,
        "model": model_config.name,
        "classes": classes,
        "img_size": model_config.img_size,
        "patch_size": model_config.patch_size,
        "grid_size": model_config.grid_size,
        "in_channels": model_config.in_channels,
        "steps_range": [lo, hi],
        "samplers": list(SAMPLERS),
        "data_images": [classes[int(c)] if 0 <= int(c) < len(classes) else str(c) for c in data_images[1]]
        if data_images is not None
        else [],
        "cfg_range": [0.0, cfg_max],
        "seed_range": [0, SEED_MAX],
        "t_eps": float(denoiser.cfg.t_eps),
        "precision": precision,
        "interval": list(interval),
        "defaults": {
            "class": classes[0],
            "seed": 0,
            "steps": default_steps,
            "sampler": sampler.method,
            "cfg": default_cfg,
        },
    }

    def error(status: int, message: str) -> Response:
        resp = jsonify({"error": message, "status": status})
        resp.status_code = status
        return resp

    @app.after_request
    def _headers(resp: Response) -> Response:
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; frame-ancestors 'none'"
        )
        if request.path.startswith("/api/"):
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.before_request
    def _rate_limit() -> Response | None:
        if not request.path.startswith("/api/"):
            return None
        wait = bucket.take(request.remote_addr or "unknown")
        if wait > 0:
            resp = error(
                429,
                f"too many requests: at most {burst} at once and {rate:g} per second; retry in {wait:.1f} s",
            )
            resp.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            return resp
        return None

    @app.errorhandler(BadRequest)
    def _bad_request(e: BadRequest) -> Response:
        return error(400, str(e))

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException) -> Response:
        if e.code == 413:
            return error(413, f"request too large: at most {max_content_length} bytes")
        return error(e.code or 500, e.description or e.name)

    @app.errorhandler(Exception)
    def _internal_error(e: Exception) -> Response:
        log.exception("demo: internal error")
        return error(500, f"internal error ({type(e).__name__}); see the server log")

    @app.get("/")
    def index() -> Response:
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return send_from_directory(STATIC_DIR, "favicon.svg", mimetype="image/svg+xml")

    @app.get("/api/info")
    def api_info() -> Response:
        return jsonify(info)

    def parse(params: dict[str, Any]) -> dict[str, Any]:
        known = ("class", "seed", "steps", "sampler", "cfg", "image")
        unknown = sorted(k for k in params if k not in known)
        if unknown:
            raise BadRequest(f"unknown parameter(s) {', '.join(unknown)}; expected any of {', '.join(known)}")
        d = info["defaults"]
        method = params.get("sampler", d["sampler"])
        if method not in SAMPLERS:
            raise BadRequest(f"sampler must be one of {', '.join(SAMPLERS)}, found {method!r}")
        return {
            "class_index": _parse_class(params.get("class", d["class"]), classes),
            "seed": _parse_int("seed", params.get("seed", d["seed"]), 0, SEED_MAX),
            "steps": _parse_int("steps", params.get("steps", d["steps"]), lo, hi),
            "sampler": method,
            "cfg": _parse_float("cfg", params.get("cfg", d["cfg"]), 0.0, cfg_max),
            "image": _parse_image(params.get("image")),
        }

    def _parse_image(value: Any) -> int | None:
        if value is None or value == "" or value == -1 or value == "-1":
            return None
        if not n_data:
            raise BadRequest("image: this demo has no data images to start from (only noise)")
        return _parse_int("image", value, 0, n_data - 1)

    @app.route("/api/sample", methods=["GET", "POST"])
    def api_sample() -> Response:
        if request.method == "POST":
            body = request.get_json(silent=True)
            if body is None and request.get_data():
                raise BadRequest("the request body must be a JSON object, found something that is not JSON")
            if body is not None and not isinstance(body, dict):
                raise BadRequest(f"the request body must be a JSON object, found {type(body).__name__}")
            params = body or {}
        else:
            params = request.args.to_dict()
        p = parse(params)
        scfg = SamplerConfig(
            method=p["sampler"],
            steps=p["steps"],
            cfg=p["cfg"],
            interval=interval,
            time_grid=sampler.time_grid,
        )
        t0 = time.perf_counter()
        start = None
        if p["image"] is not None:  # inverted and regenerated with one invertible solver (a -pc's predictor)
            scfg = scfg.replace(method=invertible_method(scfg.method))
            assert data_images is not None
            src_u8 = data_images[0][p["image"]]  # [C,S,S]
            src_class = int(data_images[1][p["image"]])
        with model_lock:
            if p["image"] is not None:
                x = torch.from_numpy(src_u8[None].astype(np.float32) / 127.5 - 1.0)  # [1,C,S,S] in [−1, 1]
                start = invert_denoiser(
                    denoiser,
                    x,
                    torch.tensor([src_class]),
                    scfg,
                    precision=precision,
                    iters=inversion_iters,
                )
            run = record_run(
                denoiser,
                class_index=p["class_index"],
                seed=p["seed"],
                sampler=scfg,
                img_size=model_config.img_size,
                in_channels=model_config.in_channels,
                precision=precision,
                z0=start,
            )
        elapsed = time.perf_counter() - t0

        def b64(a: Any) -> str:
            return base64.b64encode(a.tobytes()).decode("ascii")

        from_image: dict[str, Any] = {}
        if p["image"] is not None:
            src_hwc = np.ascontiguousarray(src_u8.transpose(1, 2, 0))
            if src_hwc.shape[-1] == 1:
                src_hwc = np.repeat(src_hwc, 3, axis=-1)
            diff = run.final.astype(np.float64) - src_hwc[..., :3].astype(np.float64)
            from_image = {
                "image": p["image"],
                "source": b64(src_hwc[..., :3]),
                "source_class": classes[src_class] if 0 <= src_class < len(classes) else str(src_class),
                # RMS(final − source) in model units ([−1, 1] pixels): the reconstruction error for its own class
                "source_rms": float(np.sqrt(np.mean((diff / 127.5) ** 2))),
                "inversion_nfe": inversion_evaluations(scfg, inversion_iters),
            }

        return jsonify(
            {
                "class": classes[p["class_index"]],
                "class_index": p["class_index"],
                "seed": p["seed"],
                "steps": p["steps"],
                "sampler": p["sampler"],
                "cfg": p["cfg"],
                "interval": list(interval),
                "width": model_config.img_size,
                "height": model_config.img_size,
                "patch_size": model_config.patch_size,
                "grid_size": model_config.grid_size,
                "encoding": "base64 uint8 [height, width, 3] RGB, row-major",
                "t": run.t,
                "z": [b64(f) for f in run.z],
                "x": [b64(f) for f in run.x],
                "final": b64(run.final),
                "x_rms": run.x_rms,
                "scale": run.scale,
                "last_x_max_abs_diff": run.last_x_max_abs_diff,
                "nfe": run.nfe,
                "elapsed_ms": round(elapsed * 1000.0, 1),
                **from_image,
            }
        )

    return app


def serve(app: Flask, host: str = "127.0.0.1", port: int = 8765, open_browser: bool = False) -> None:
    """Serve ``app`` with werkzeug's threaded server until Ctrl-C; print the address; optionally open it."""
    from werkzeug.serving import make_server

    try:
        server = make_server(host, port, app, threaded=True)
    except (OSError, SystemExit) as e:  # werkzeug reports a busy port with SystemExit(1)
        raise PortUnavailable(
            f"cannot listen on {host}:{port} (in use or not allowed); choose another port (0 picks a free one)"
        ) from e
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown if ':' not in shown else f'[{shown}]'}:{server.server_port}/"
    print(f"jitkit demo: serving on {url}  (Ctrl-C to stop)", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"jitkit demo: warning: bound to {host}, reachable from other machines", flush=True)
    if open_browser:  # the socket already listens, so the browser's first request just waits for us
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    finally:
        server.server_close()
