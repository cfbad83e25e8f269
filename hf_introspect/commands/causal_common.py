"""Options and checks shared by the causal commands (steer, ablate, patch): the model to re-run,
the layers (residual indices of the model), the questions, the directions. Every check that can
fail runs before the model is loaded and before anything is written."""

from __future__ import annotations

import argparse
import logging

import numpy as np

from ..errors import UserError

logger = logging.getLogger("hf_introspect")


def add_causal_arguments(parser: argparse.ArgumentParser, *, directions: bool = True) -> None:
    parser.add_argument("--layers", default="all",
                        help="residual indices to intervene at: all | 10,15,20 | 16-20 (0 = embeddings, "
                             "num_layers = last block before the final norm; default all)")
    if directions:
        parser.add_argument("--directions", required=True, metavar="PATH",
                            help="what `hf-introspect directions --out` writes (folder or .npz), or a .npy of "
                                 "shape (hidden,) or (num_layers + 1, hidden)")
        parser.add_argument("--direction_pass", default=None, help="pass of the direction set to use (when it holds several)")
        parser.add_argument("--direction_method", default=None, help="method of the direction set to use (when it holds several)")
    parser.add_argument("--num_questions", type=int, default=100, help="first N questions of the pass (default 100)")
    parser.add_argument("--controls", type=int, default=25,
                        help="random controls: orthogonal directions (steer, ablate) or random pairings (patch) (default 25)")
    parser.add_argument("--batch_size", type=int, default=8, help="prompts per forward (default 8)")
    parser.add_argument("--model", default=None, help="the run's model, if it moved (its fingerprint must match)")
    parser.add_argument("--lora_checkpoint", default=None, help="the run's adapter, if it moved (fingerprint checked)")
    parser.add_argument("--dtype", default=None, help="model dtype (default: the run's)")
    parser.add_argument("--device", default=None, help="cpu | cuda | cuda:1 (default: cuda when available)")
    parser.add_argument("--device_map", default=None, help='e.g. "auto": spread the model over all visible GPUs')
    parser.add_argument("--no_prefix_reuse", action="store_true",
                        help="run every edited prompt whole instead of reusing its KV cache (slower; for checks)")


def model_layers(spec: str, num_layers: int) -> list[int]:
    """``--layers`` as residual indices of the model (not only stored ones).

    Example:
        >>> model_layers("10,15-16", 30)
        [10, 15, 16]
    """
    from .analysis_common import parse_layer_spec

    for part in str(spec).replace("-", ",").split(","):
        if part.strip().isdigit() and int(part) > num_layers:
            raise UserError(f"--layers {spec}: layer {int(part)} is outside the model (residual indices 0-{num_layers})")
    return parse_layer_spec(spec, list(range(num_layers + 1)))


def parse_numbers(spec: str, flag: str) -> list[float]:
    """``-4,-2,0,2,4`` -> floats, one-line error otherwise.

    Example:
        >>> parse_numbers("-4,0,2.5", "--strengths")
        [-4.0, 0.0, 2.5]
    """
    try:
        values = [float(x) for x in str(spec).split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} {spec}: not a comma-separated list of numbers; e.g. {flag} -4,-2,0,2,4") from None
    if not values or not all(np.isfinite(values)):
        raise UserError(f"{flag} {spec}: give finite numbers, e.g. {flag} -4,-2,0,2,4")
    return values


def check_counts(args) -> None:
    for flag, value, low in (("--num_questions", args.num_questions, 2), ("--controls", args.controls, 0),
                             ("--batch_size", args.batch_size, 1)):
        if value < low:
            raise UserError(f"{flag} must be >= {low} (got {value})")


def run_shape(data) -> tuple[int, int]:
    cfg = data.run_config or {}
    if "num_layers" not in cfg or "hidden_size" not in cfg:
        raise UserError(f"{data.source} has no run_config.json with the model's shape; causal commands need the "
                        "run folder written by `hf-introspect collect`")
    return int(cfg["num_layers"]), int(cfg["hidden_size"])


def with_mcq(data, pass_name: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the first ``n`` questions of ``pass_name`` that the mcq pass also holds, and their
    mcq rows (same order)."""
    from ..analysis.data import align

    if "mcq" not in data.passes:
        raise UserError(f"{data.source} has no mcq pass; the MCQ entropy is needed (collect with --passes including mcq)")
    rows, mcq_rows = align(data.question_ids(pass_name), data.question_ids("mcq"))
    return rows[:n], mcq_rows[:n]


def mcq_entropy(data, mcq_rows: np.ndarray) -> np.ndarray:
    from ..analysis.data import column_values

    return column_values(data.split("mcq"), "entropy")[mcq_rows].astype(np.float64)


def load_model_for(args, data):
    from ..analysis.causal.run_model import load_run_model

    device = args.device
    if device is None and args.device_map is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_run_model(data.run_config, model=args.model, lora_checkpoint=args.lora_checkpoint, dtype=args.dtype,
                          device=device, device_map=args.device_map)


def progress_rows(args):
    """A callback counting readout rows on stderr (tqdm), or None with --json or without tqdm."""
    if getattr(args, "json", False):
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar = tqdm(unit=" readouts", desc="readouts", leave=False)
    return bar.update


def open_with_directions(args):
    """Open the run (after ``check_counts``) and the tested directions at ``--layers``: (data, layers, dirs).

    The steer and ablate commands start the same way: model layers from ``--layers``, one direction a
    layer from ``--directions`` (filtered by ``--direction_pass`` / ``--direction_method``).
    """
    from ..analysis.causal.vectors import tested_directions
    from .analysis_common import open_from_args

    check_counts(args)
    data = open_from_args(args)
    num_layers, hidden = run_shape(data)
    layers = model_layers(args.layers, num_layers)
    dirs = tested_directions(args.directions, layers, num_layers, hidden, pass_name=args.direction_pass,
                             method=args.direction_method)
    return data, layers, dirs


def runner_options(args) -> dict:
    """The keyword arguments every causal experiment (steer, ablate, patch) takes from the shared flags."""
    return {"controls": args.controls, "seed": args.seed, "batch_size": args.batch_size,
            "reuse_prefix": not args.no_prefix_reuse, "progress": progress_rows(args)}
