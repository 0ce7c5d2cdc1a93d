"""Checkpoints on the Hugging Face Hub: ``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` paths and ``jitkit push``.

``resolve_hub_path`` downloads the safetensors, JSON and small text/PNG files of a Hub repository (through
``huggingface_hub``: its cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and tokens from the usual places) and
returns the local folder. Pickled weights (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``) are never
downloaded; a repository holding only those is refused. ``hub_checkpoint_folder`` turns that folder into one
``resolve_checkpoint_path`` understands: a jitkit run or checkpoint folder as it is, a diffusers-style folder
converted once (``import_diffusers``) into a run folder cached under ``<HF_HOME>/../jitkit/hub/`` keyed by
the commit. ``push_to_hub`` uploads a run's last checkpoint (or its diffusers export) with a model card.

``huggingface_hub`` is the optional extra ``jitkit[hub]``; it is imported only when an ``hf://`` path or a
push is used.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from jitkit.checkpoint.layout import META_FILE, WEIGHT_FILES, CheckpointError

__all__ = [
    "HubRef",
    "hub_checkpoint_folder",
    "is_hub_spec",
    "make_model_card",
    "parse_hub_spec",
    "push_to_hub",
    "resolve_hub_path",
]

SCHEME = "hf://"
# what a download may fetch (relative to the subfolder); anything else, pickles above all, stays on the Hub
ALLOWED_SUFFIXES = ("json", "safetensors", "txt", "md", "png")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
GRID_NAME = "sample_grid.png"
_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
_SPEC_RE = re.compile(rf"^hf:/+(?P<org>{_NAME})/(?P<repo>{_NAME})(?:@(?P<rev>[^/]+))?(?:/(?P<sub>.*))?$")
_FORMAT = "hf://ORG/REPO[@REVISION][/SUBFOLDER]"
_LOGIN_HINT = (
    "check the network (and HF_ENDPOINT), or `huggingface-cli login` / HF_TOKEN for a private repository; "
    "to work offline set HF_HUB_OFFLINE=1 with a cache filled by an earlier download"
)


@dataclass(frozen=True)
class HubRef:
    """A parsed ``hf://`` path."""

    repo_id: str
    revision: str | None = None
    subfolder: str = ""

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        sub = f"/{self.subfolder}" if self.subfolder else ""
        return f"{SCHEME}{self.repo_id}{rev}{sub}"


def is_hub_spec(path: Any) -> bool:
    """Whether ``path`` names a Hub checkpoint (``hf://…``; a ``Path`` of one reads ``hf:/…``)."""
    return isinstance(path, (str, os.PathLike)) and str(path).startswith("hf:/")


def parse_hub_spec(spec: str | os.PathLike) -> HubRef:
    """``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` → :class:`HubRef` (ValueError naming the form if malformed).

    A revision holding ``/`` (``refs/pr/1``) is written URL-encoded: ``@refs%2Fpr%2F1``.
    """
    s = str(spec)
    m = _SPEC_RE.match(s)
    if m is None:
        raise ValueError(f"malformed Hub path {s!r}: expected {_FORMAT}, e.g. hf://org/jit-b16@main/run")
    sub = m.group("sub") or ""
    parts = [x for x in sub.split("/") if x]
    if any(x in (".", "..") for x in parts):
        raise ValueError(
            f"malformed Hub path {s!r}: the subfolder may not contain '.' or '..'; expected {_FORMAT}"
        )
    rev = unquote(m.group("rev")) if m.group("rev") else None
    if rev is not None and not rev.strip():
        raise ValueError(f"malformed Hub path {s!r}: empty revision after '@'; expected {_FORMAT}")
    return HubRef(f"{m.group('org')}/{m.group('repo')}", rev, "/".join(parts))


def _hf():
    from jitkit.runtime.extras import require_extra

    return require_extra("huggingface_hub", "hub", "an hf:// path")


def _download(ref: HubRef) -> Path:
    """The snapshot folder (``…/snapshots/<commit>``) holding the allowed files of ``ref``'s subfolder."""
    hf = _hf()
    from huggingface_hub import errors

    from jitkit import __version__

    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    patterns = [f"{prefix}*.{ext}" for ext in ALLOWED_SUFFIXES]
    rev = ref.revision or "main"
    try:
        local = hf.snapshot_download(
            ref.repo_id,
            revision=ref.revision,
            allow_patterns=patterns,
            library_name="jitkit",
            library_version=__version__,
        )
    except errors.RevisionNotFoundError as e:
        raise FileNotFoundError(
            f"{ref}: revision {rev!r} does not exist in repository {ref.repo_id} (a branch, tag or commit)"
        ) from e
    except errors.RepositoryNotFoundError as e:  # GatedRepoError too
        raise FileNotFoundError(
            f"{ref}: repository {ref.repo_id} not found on {hf.constants.ENDPOINT} (or it is private or gated: "
            "`huggingface-cli login` or set HF_TOKEN)"
        ) from e
    except errors.LocalEntryNotFoundError as e:
        state = "HF_HUB_OFFLINE is set" if hf.constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise FileNotFoundError(
            f"{ref}: {state} and the cache ({hf.constants.HF_HUB_CACHE}) holds no complete copy of revision "
            f"{rev!r}; {_LOGIN_HINT}"
        ) from e
    except errors.HfHubHTTPError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{ref}: the Hub answered {first}; {_LOGIN_HINT}") from e
    except OSError as e:  # connection errors that huggingface_hub let through
        raise FileNotFoundError(f"{ref}: cannot download ({type(e).__name__}: {e}); {_LOGIN_HINT}") from e
    return Path(local)


def _repo_files(ref: HubRef, commit: str) -> list[str]:
    """The repository's file list at ``commit`` as listed during the download (no network); [] if unknown."""
    hf = _hf()
    try:
        return [f.path for f in hf.get_cached_repo_tree(ref.repo_id, revision=commit)]
    except Exception:  # no cached listing (e.g. a cache filled by an older huggingface_hub)
        return []


def resolve_hub_path(spec: str | os.PathLike) -> Path:
    """Download ``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` (safetensors, JSON, text, PNG only) and return the
    local folder: a jitkit run folder, a checkpoint folder or a diffusers-style folder.

    Errors (one line each): a malformed path (ValueError); a repository, revision or subfolder that does not
    exist, or no network and no cached copy (FileNotFoundError); a repository whose only weights are pickles
    (CheckpointError, without downloading them).
    """
    return _resolve(parse_hub_spec(spec))[1]


def _resolve(ref: HubRef) -> tuple[Path, Path]:
    """(the snapshot folder, named by its commit; the requested folder in it), checked as resolve_hub_path says."""
    root = _download(ref)
    folder = root / ref.subfolder if ref.subfolder else root
    files = _repo_files(ref, root.name)
    prefix = f"{ref.subfolder}/" if ref.subfolder else ""
    if not folder.is_dir():
        tops = sorted({f.split("/")[0] for f in files if "/" in f})
        raise FileNotFoundError(
            f"{ref}: repository {ref.repo_id} has no folder {ref.subfolder!r} at this revision"
            f" (folders: {', '.join(tops) or 'none'})"
        )
    if not any(folder.rglob("*.safetensors")):
        pickles = [f for f in files if f.startswith(prefix) and f.lower().endswith(PICKLE_SUFFIXES)]
        if pickles:
            raise CheckpointError(
                f"{ref}: refusing {pickles[0]}: its only weights are pickles ({len(pickles)} file(s)), which "
                "jitkit never downloads or unpickles; ask for a safetensors upload (jitkit push, or "
                "save_pretrained(..., safe_serialization=True))"
            )
        raise CheckpointError(f"{ref}: no .safetensors weights in the repository at this revision")
    return root, folder


def _cache_root() -> Path:
    """Where converted diffusers folders live: $JITKIT_CACHE/hub, else beside the Hugging Face cache."""
    env = os.environ.get("JITKIT_CACHE")
    if env:
        return Path(env).expanduser() / "hub"
    return Path(_hf().constants.HF_HOME).expanduser().parent / "jitkit" / "hub"


def hub_checkpoint_folder(spec: str | os.PathLike) -> Path:
    """``resolve_hub_path``, with a diffusers-style folder converted (once per commit) into a cached run
    folder, so that the result is something ``resolve_checkpoint_path`` reads."""
    from jitkit.checkpoint.diffusers import import_diffusers, is_diffusers_folder
    from jitkit.checkpoint.load import latest_checkpoint

    ref = parse_hub_spec(spec)
    root, folder = _resolve(ref)
    if (folder / META_FILE).is_file() or (folder / "checkpoints").is_dir() or not is_diffusers_folder(folder):
        return folder
    key = ref.repo_id.replace("/", "--") + f"@{root.name}"
    if ref.subfolder:
        key += "--" + ref.subfolder.replace("/", "--")
    out = _cache_root() / key
    if latest_checkpoint(out) is not None:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    try:
        import_diffusers(folder, tmp)
        if out.exists():  # a failed earlier conversion (or a concurrent one that won)
            if latest_checkpoint(out) is not None:
                return out
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# -- push ---------------------------------------------------------------------------------------------------


def _last_eval(run: Path) -> dict[str, Any] | None:
    p = run / "eval.jsonl"
    if not p.is_file():
        return None
    last = None
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(rec, dict):
            last = rec
    return last


def _latest_grid(run: Path) -> Path | None:
    grids = sorted((run / "samples").glob("step-*.png")) if (run / "samples").is_dir() else []
    return grids[-1] if grids else None


def _run_of(ckpt: Path) -> Path | None:
    """The run folder that holds checkpoint folder ``ckpt`` (RUN/checkpoints/NAME), if it is one."""
    run = ckpt.parent.parent
    return run if ckpt.parent.name == "checkpoints" and (run / "config.json").is_file() else None


def _table(d: dict[str, Any]) -> str:
    rows = ["| key | value |", "|---|---|"]
    for k, v in d.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        rows.append(f"| `{k}` | {json.dumps(v) if isinstance(v, (list, dict)) else v} |")
    return "\n".join(rows)


def make_model_card(
    repo_id: str,
    meta: dict[str, Any],
    *,
    fmt: str = "jitkit",
    eval_record: dict[str, Any] | None = None,
    grid: str | None = None,
    files: list[str] | None = None,
) -> str:
    """The README.md of a pushed run: model and sampler config, the last evaluation, the grid, how to load."""
    from jitkit.config import RunConfig

    cfg = RunConfig.from_dict(meta["config"], strict=False)
    mc, sc = cfg.model, cfg.sampler
    classes = list(meta.get("classes") or [])
    shown = ", ".join(classes[:10]) + (f", … ({len(classes)} in all)" if len(classes) > 10 else "")
    lines = [
        "---",
        "library_name: jitkit",
        "tags:",
        *[f"- {t}" for t in ("jitkit", "jit", "diffusion", "pixel-space", "image-generation")],
        "---",
        "",
        f"# {repo_id}",
        "",
        f"A JiT pixel-space diffusion transformer (`{mc.name}`, {mc.img_size} px, {mc.num_classes} classes) "
        f"trained with [jitkit](https://github.com/) for {int(meta.get('step', 0))} steps "
        f"({int(meta.get('epoch', 0))} epochs); uploaded in the {fmt} layout.",
        "",
        "## Use",
        "",
        "```bash",
        "pip install 'jitkit[hub]'",
        f"jitkit sample hf://{repo_id} --num 16 --grid grid.png",
        "```",
        "",
        "```python",
        "from jitkit.checkpoint import load_denoiser",
        f'denoiser, config, classes = load_denoiser("hf://{repo_id}", ema="1")',
        "```",
        "",
        "## Model",
        "",
        _table(mc.to_dict()),
        "",
        "## Sampler",
        "",
        _table(sc.to_dict()),
    ]
    if classes:
        lines += ["", f"Classes: {shown}"]
    if eval_record:
        lines += ["", "## Evaluation (last entry of eval.jsonl)", "", _table(eval_record)]
    if grid:
        lines += ["", "## Samples", "", f"![samples]({grid})"]
    if files:
        lines += ["", "## Files", "", *[f"- `{f}`" for f in sorted(files)]]
    return "\n".join(lines) + "\n"


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def stage_push(run: str | Path, folder: Path, repo_id: str, fmt: str = "jitkit", ema: str = "1") -> list[str]:
    """Write into (empty) ``folder`` what ``push_to_hub`` uploads; return the files, relative to it."""
    from jitkit.checkpoint.load import _read_meta, resolve_checkpoint_path

    if fmt not in ("jitkit", "diffusers"):
        raise ValueError(f"format must be 'jitkit' or 'diffusers', found {fmt!r}")
    ckpt = resolve_checkpoint_path(run)
    meta = _read_meta(ckpt)
    run_dir = _run_of(ckpt)
    if fmt == "jitkit":
        for f in [META_FILE, *WEIGHT_FILES.values()]:  # never state.pt: optimizer state, torch-pickled
            if (ckpt / f).is_file():
                _place(ckpt / f, folder / f)
        if run_dir is not None:
            for f in ("config.json", "classes.json"):
                if (run_dir / f).is_file():
                    _place(run_dir / f, folder / f)
    else:
        from jitkit.checkpoint.diffusers import export_diffusers

        export_diffusers(ckpt, folder / ".export", ema=ema)
        for p in (folder / ".export").iterdir():
            os.replace(p, folder / p.name)
        (folder / ".export").rmdir()
    grid_src = _latest_grid(run_dir) if run_dir is not None else None
    if grid_src is not None:
        _place(grid_src, folder / GRID_NAME)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    card = make_model_card(
        repo_id,
        meta,
        fmt=fmt,
        eval_record=_last_eval(run_dir) if run_dir is not None else None,
        grid=GRID_NAME if grid_src is not None else None,
        files=files + ["README.md"],
    )
    (folder / "README.md").write_text(card)
    return sorted(files + ["README.md"])


def push_to_hub(
    run: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    fmt: str = "jitkit",
    ema: str = "1",
) -> str:
    """Upload a run's last checkpoint (``fmt`` "jitkit": meta.json, config, safetensors weights, classes) or its
    diffusers export (``fmt`` "diffusers", weights ``ema``) with the sample grid and a model card to the Hub
    model repository ``repo_id`` (created if missing; branch ``revision`` too). Returns the commit URL."""
    if not re.fullmatch(rf"{_NAME}/{_NAME}", repo_id):
        raise ValueError(f"repo_id must be ORG/REPO, found {repo_id!r}")
    hf = _hf()
    with tempfile.TemporaryDirectory(prefix="jitkit-push-") as tmp:
        files = stage_push(run, Path(tmp), repo_id, fmt, ema)
        api = hf.HfApi()
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=tmp,
            revision=revision,
            repo_type="model",
            commit_message=f"jitkit push ({fmt}): {len(files)} files",
        )
    return str(getattr(info, "commit_url", info))
