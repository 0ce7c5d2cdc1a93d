"""The ``jitkit`` command: argument parsing → config → one library call.

Each command group lives in its own module here and exposes ``register(subparsers)``; the handlers import
torch and the library lazily so that ``jitkit --help`` is instant.

Exit codes: 0 done; 1 a result that says no (``jitkit plan``: does not fit); 2 a usage error (a bad flag,
value, path or file, reported in one line before any expensive work); 3 the training loss became NaN/inf;
4 the disk filled up; 128 + the signal (130 SIGINT, 143 SIGTERM) when interrupted, after ``jitkit train``
saved a checkpoint.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# the commands that compute: before they run, freed memory is kept for reuse (jitkit.runtime.process)
_COMPUTE = frozenset(
    {"train", "sample", "eval", "ref-stats", "sweep", "invert", "experiment", "demo", "bench"}
)

# command-group modules, each with register(subparsers); add a module here to add its commands
_MODULES = (
    "models",
    "data",
    "train",
    "plan",
    "sample",
    "evaluate",
    "sweep",
    "invert",
    "experiment",
    "bench",
    "demo",
    "export",
    "hub",
)


def build_parser() -> argparse.ArgumentParser:
    from jitkit import __version__

    parser = argparse.ArgumentParser(
        prog="jitkit",
        description="Train, sample and evaluate JiT pixel-space diffusion transformers on any hardware.",
    )
    parser.add_argument("--version", action="version", version=f"jitkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _MODULES:
        importlib.import_module(f"jitkit.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if args.command in _COMPUTE:
            from jitkit.runtime import retain_freed_memory

            retain_freed_memory()
        rc = args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
    ) as e:  # the input or the environment named by it: exit code 2, as argparse's own usage errors
        if getattr(args, "debug", False):
            raise
        print(f"jitkit {args.command}: error: {e}", file=sys.stderr)
        return 2
    return _exit_rank(int(rc or 0))


def _exit_rank(rc: int) -> int:
    """A torchrun rank ends here, without the interpreter's finalisation: the C++ threads of the
    distributed backend can still reach for the GIL while Python tears down and abort the process
    ("terminate called without an active exception", exit -6) after a run that finished and saved."""
    from jitkit.runtime import dist

    if not dist.owned_group_used():
        return rc
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
