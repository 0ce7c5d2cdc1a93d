"""``jitkit push``: a run's last checkpoint (or its diffusers export) to a Hugging Face Hub model repository.

Reading goes the other way without a command of its own: every run or checkpoint argument also takes
``hf://ORG/REPO[@REVISION][/SUBFOLDER]`` (docs/ecosystem.md).
"""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "push",
        help="upload a run's last checkpoint to the Hugging Face Hub (load it back with hf://ORG/REPO)",
        description=(
            "Upload the latest checkpoint of RUN (meta.json, config, safetensors weights, classes; never the "
            "optimizer state) or its diffusers export, the newest sample grid and a generated model card "
            "(README.md) to the Hub model repository ORG/REPO, created if missing. Needs huggingface_hub "
            "(pip install 'jitkit[hub]') and a token (huggingface-cli login or HF_TOKEN). Afterwards: "
            "jitkit sample hf://ORG/REPO"
        ),
    )
    p.add_argument("run", metavar="RUN", help="run folder, checkpoint folder or a file in one")
    p.add_argument("repo", metavar="ORG/REPO", help="the Hub model repository")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument(
        "--revision", metavar="BRANCH", default=None, help="branch to push to (created if missing)"
    )
    p.add_argument(
        "--format",
        choices=("jitkit", "diffusers"),
        default="jitkit",
        help="jitkit checkpoint files (default) or a diffusers-style folder",
    )
    p.add_argument(
        "--ema",
        choices=["1", "2", "none"],
        default="1",
        help="weights of a diffusers export (default: EMA 1)",
    )
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.set_defaults(func=run_push)


def run_push(args: argparse.Namespace) -> int:
    from jitkit.checkpoint.hub import push_to_hub

    url = push_to_hub(
        args.run, args.repo, private=args.private, revision=args.revision, fmt=args.format, ema=args.ema
    )
    rev = f"@{args.revision}" if args.revision else ""
    print(
        f"jitkit push: uploaded {args.run} ({args.format}) to {url}. Load it with: jitkit sample hf://{args.repo}{rev}"
    )
    return 0
