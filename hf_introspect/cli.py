"""`hf-introspect` command line: one subcommand per module in hf_introspect.commands.

Errors the user can fix print as one line (``error: ...``) with exit status 2; ``--debug`` shows
the full traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from .errors import UserError

# subcommand -> module in hf_introspect.commands exposing add_arguments(parser) and run(args) -> int
COMMANDS = {
    "collect": "collect activations and behaviour for the three passes",
    "inspect": "summarise one run, or compare two",
    "push": "push a run to a Hub dataset repo (one config per model, one split per pass)",
    "export": "write a run as the Hub repo layout (parquet + README) or the seed's per-layer .npy layout",
    "merge": "merge runs of the same model and settings on different questions into one run",
    "steer": "add a direction at the readout token with the run's model; dose-response vs random directions",
    "ablate": "project a direction out at the readout token; change in confidence and calibration vs random",
    "patch": "write another question's stored activation into the readout token; normalised shift vs random pairs",
    "probe": "layerwise linear probes of a target, with split intervals and a permutation null",
    "surface": "a target from surface features vs activations vs both, per layer",
    "directions": "probe and mean-diff directions per pass and layer (saved); cosines, self vs other, null",
    "transfer": "a probe trained on one pass applied to the others; transfer ratio, self/other cross-prediction",
    "verify": "check every shard of a run against its recorded size, rows and checksum (exit 1 naming damaged ones)",
    "analyze": "the Day 1-4 analyses (probes, surface, directions, transfer) as one Markdown report",
}


LIBRARIES = ("transformers", "datasets", "accelerate", "peft", "httpx", "huggingface_hub")


def setup_logging(debug: bool = False) -> None:
    """This tool's messages at INFO (DEBUG with ``--debug``); the libraries' warnings only with
    ``--debug`` (deprecations and tokenizer notices are noise otherwise), errors always.
    ``TRANSFORMERS_VERBOSITY`` (debug|info|warning|error|critical), when set, wins for transformers.
    Missing or unexpected weights do not depend on this: models.load refuses them itself.

    Example:
        >>> setup_logging(); logging.getLogger("datasets").level == logging.ERROR
        True
    """
    logging.basicConfig(format="[hf_introspect] %(message)s", level=logging.DEBUG if debug else logging.INFO,
                        stream=sys.stderr)
    logging.getLogger("hf_introspect").setLevel(logging.DEBUG if debug else logging.INFO)
    library_level = logging.WARNING if debug else logging.ERROR
    for name in LIBRARIES:
        logging.getLogger(name).setLevel(library_level)
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:
        return
    # transformers keeps its own handler and level: set it through its API so the env var keeps working
    env = os.environ.get("TRANSFORMERS_VERBOSITY", "").strip().lower()
    level = tf_logging.log_levels.get(env, library_level)
    tf_logging.set_verbosity(level)


def run_command(module_name: str, args: argparse.Namespace) -> int:
    """Run a subcommand with the project's error contract."""
    setup_logging(getattr(args, "debug", False))
    module = importlib.import_module(f"hf_introspect.commands.{module_name}")
    try:
        return int(module.run(args) or 0)
    except UserError as exc:
        if getattr(args, "debug", False):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; rerun the same command to resume", file=sys.stderr)
        return 130


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help text already names it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default is argparse.SUPPRESS or not action.option_strings:
            return text
        if action.nargs == 0:  # a switch (store_true/store_false/store_const): not given = off
            return f"{text} (default: off)"
        return f"{text} (default: {'none' if action.default is None else action.default})"


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks and the libraries' warnings")


def standalone_main(command: str, prog: str, description: str, argv: list[str] | None = None) -> int:
    """Entry point of a seed-style script (``scripts/*.py``) running one subcommand."""
    module = importlib.import_module(f"hf_introspect.commands.{command}")
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter)
    module.add_arguments(parser)
    add_common(parser)
    return run_command(command, parser.parse_args(argv))


def build_parser() -> argparse.ArgumentParser:
    """The ``hf-introspect`` parser with every subcommand of :data:`COMMANDS` (imports each module).

    Example:
        >>> sorted(build_parser()._subparsers._group_actions[0].choices)[:2]
        ['ablate', 'analyze']
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="hf-introspect", description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"hf-introspect {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, formatter_class=HelpFormatter)
        importlib.import_module(f"hf_introspect.commands.{name}").add_arguments(p)
        add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args.command, args)


if __name__ == "__main__":
    sys.exit(main())
