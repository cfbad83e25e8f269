#!/usr/bin/env python
"""Seed-compatible entry point: python scripts/inspect_collected_data.py --data_dir test_run_base/mcq --show_examples 3"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hf_introspect.commands.inspect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
