"""`hf-introspect export RUN --to DIR [--format hub|npy]`: the Hub repo layout locally, or the seed's
per-layer .npy layout."""

from __future__ import annotations

import argparse

from ..errors import UserError


def _size(text: str) -> int:
    """'500MB' / '2GB' / '100000' -> bytes (decimal units, as push_to_hub's max_shard_size)."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
    t = text.strip().upper()
    num = t.rstrip("KMGTB")
    if not num.replace(".", "", 1).isdigit() or t[len(num):] not in units:
        raise argparse.ArgumentTypeError(f"expected a size like 500MB or 2GB, got {text!r}")
    value = int(float(num) * units[t[len(num):]])
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def add_encoding_arguments(p: argparse.ArgumentParser) -> None:
    from ..runs.hub import COMPRESSIONS, DEFAULT_COMPRESSION

    g = p.add_argument_group("parquet encoding (hub layout)")
    g.add_argument("--max_shard_size", type=_size, default="500MB", help="Arrow bytes per parquet file (default 500MB)")
    g.add_argument("--row_group_size", type=_size, default="32MB", help="Arrow bytes per row group (default 32MB)")
    g.add_argument("--compression", default=DEFAULT_COMPRESSION, choices=COMPRESSIONS,
                   help="codec of the activation columns (default zstd, level 1)")
    g.add_argument("--workers", type=int, default=None, help="splits encoded in parallel (default: one per CPU, at most 3)")


def encoding_kwargs(args: argparse.Namespace) -> dict:
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers must be >= 1 (got {args.workers})")
    return {"max_shard_size": args.max_shard_size, "row_group_size": args.row_group_size,
            "compression": args.compression, "workers": args.workers}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("output_dir", help="a finished run folder")
    p.add_argument("--to", required=True, help="destination folder")
    p.add_argument("--format", default="hub", choices=["hub", "npy"],
                   help="hub: <config>/<split>-0000i-of-0000N.parquet + README.md, exactly as pushed (the folder "
                        "may already hold other configs); npy: <pass>/metadata.json + activations_layer_NN.npy "
                        "[n_questions, max_positions, hidden] float16, right-padded with zeros")
    p.add_argument("--config_name", default=None, help="hub: config to write (default: derived from the model)")
    p.add_argument("--repo_id", default=None, help="hub: repo id shown in the card's loading example")
    p.add_argument("--passes", default=None, help="npy: comma-separated passes (default: all)")
    p.add_argument("--layers", default=None, help="npy: comma-separated layer indices (default: all stored)")
    add_encoding_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.format == "npy":
        from ..runs.npy_export import export_npy

        layers = None
        if args.layers:
            try:
                layers = [int(x) for x in args.layers.split(",") if x.strip()]
            except ValueError:
                raise UserError(f"--layers {args.layers}: expected comma-separated integers like 0,15,30") from None
        passes = [p.strip() for p in args.passes.split(",") if p.strip()] if args.passes else None
        report = export_npy(args.output_dir, args.to, passes=passes, layers=layers)
        for name, r in report.items():
            print(f"{name}: {r['questions']} questions, {len(r['layers'])} layer file(s) of "
                  f"[{r['questions']}, {r['max_positions']}, hidden] float16")
        print(f"wrote {args.to} (rows right-padded with zeros; metadata[i]['num_positions'] rows are real)")
        return 0
    from ..runs.hub import export_hub_layout

    report = export_hub_layout(args.output_dir, args.to, config_name=args.config_name, repo_id=args.repo_id,
                               **encoding_kwargs(args))
    print(f"exported {report.summary()}")
    print(f'load it with: load_dataset("{args.to}", "{report.config_name}", split="mcq")'
          '.with_format("numpy", dtype=None)')
    return 0
