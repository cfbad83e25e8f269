"""Options shared by the analysis commands (probe, surface, analyze, directions, transfer, ...).

``add_run_arguments(parser)`` adds: positional RUN, ``--config``, ``--pass``, ``--layers``,
``--position``, ``--seed``, ``--json``, ``--plots DIR``. ``open_from_args`` opens the run;
``layers_from_args`` turns ``--layers`` into stored indices; ``emit`` prints the result: a readable
summary, or with ``--json`` the whole result as JSON on stdout (nothing else goes to stdout).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..analysis.serialize import jsonable
from ..errors import UserError


def add_run_arguments(parser: argparse.ArgumentParser, *, pass_default: str = "mcq", position: bool = True,
                      layers: bool = True) -> None:
    parser.add_argument("run", metavar="RUN",
                        help="run folder, one split folder, an exported folder, or a Hub repo id (USER/NAME)")
    parser.add_argument("--config", default=None, help="config (model) of an exported folder / Hub repo")
    parser.add_argument("--pass", dest="pass_name", default=pass_default,
                        help=f"pass whose activations are analysed: mcq | self_conf | other_conf (default {pass_default})")
    if layers:
        parser.add_argument("--layers", default="all", help="stored layers to analyse: all | 0,8,16-20 (default all)")
    if position:
        parser.add_argument("--position", default="answer",
                            help="token read: answer (readout, default) | question_end | options_end | "
                                 "mean:question | an int index into the stored rows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the splits and permutations (default 0)")
    parser.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout instead")
    parser.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots into DIR")


def open_from_args(args, source=None):
    """The RunData of ``args.run`` (or ``source``), checked to hold ``args.pass_name``."""
    from ..analysis.data import open_run_data

    data = open_run_data(source if source is not None else args.run, getattr(args, "config", None))
    data.split(args.pass_name)  # fails early, in one line, on an unknown pass
    return data


def parse_layer_spec(spec: str, stored: list[int]) -> list[int]:
    """``all`` | ``0,8,16-20`` -> stored layer indices, every one checked.

    Example:
        >>> parse_layer_spec("0,2-3", [0, 1, 2, 3, 4])
        [0, 2, 3]
        >>> parse_layer_spec("all", [0, 5])
        [0, 5]
    """
    if spec in (None, "", "all"):
        return list(stored)
    chosen: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        try:
            if "-" in part.lstrip("-"):
                lo, hi = part.split("-", 1)
                chosen.update(range(int(lo), int(hi) + 1))
            elif part:
                chosen.add(int(part))
        except ValueError:
            raise UserError(f"--layers {spec}: {part!r} is not an index or a range like 16-20") from None
    missing = sorted(chosen - set(stored))
    if missing:
        raise UserError(f"--layers {spec}: layer {missing[0]} is not stored in this run; stored: "
                        f"{','.join(map(str, stored))}")
    if not chosen:
        raise UserError(f"--layers {spec} selects no layer")
    return sorted(chosen)


def layers_from_args(args, data) -> list[int]:
    return parse_layer_spec(getattr(args, "layers", "all"), data.layers(args.pass_name))


def emit(args, result, summary: str) -> int:
    """Print ``summary`` (text) or, with ``--json``, ``result`` as JSON (to_json() if it has one)."""
    if getattr(args, "json", False):
        payload = result.to_json() if hasattr(result, "to_json") else jsonable(result)
        print(json.dumps(payload, indent=1))
    else:
        print(summary)
    return 0


def plots_dir(args) -> Path | None:
    """``--plots DIR`` as a created folder, or None."""
    if not getattr(args, "plots", None):
        return None
    folder = Path(args.plots)
    folder.mkdir(parents=True, exist_ok=True)
    return folder
