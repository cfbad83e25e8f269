"""`hf-introspect push RUN --repo_id USER/NAME`: one config per model, one split per pass."""

from __future__ import annotations

import argparse

from .export import add_encoding_arguments, encoding_kwargs


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", help="a finished run folder (the --output_dir of collect, or of merge)")
    p.add_argument("--repo_id", required=True, help="Hub dataset repo, USER/NAME (created if missing)")
    p.add_argument("--config_name", default=None,
                   help="config to write (default: the model's name, plus -lora-<checkpoint> for an adapter)")
    p.add_argument("--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)")
    p.add_argument("--revision", default=None, help="branch to push to (created if missing; default: main)")
    p.add_argument("--commit_message", default=None, help="message of the Hub commit (default: names the config and run id)")
    add_encoding_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..runs.hub import push_run

    report = push_run(args.output_dir, args.repo_id, config_name=args.config_name, private=args.private,
                      revision=args.revision, commit_message=args.commit_message, **encoding_kwargs(args))
    print(f"pushed {report.summary()}")
    if report.commit_url:
        print(f"commit: {report.commit_url}")
    print(f'load it with: load_dataset("{args.repo_id}", "{report.config_name}", split="mcq")'
          '.with_format("numpy", dtype=None)')
    return 0
