#!/usr/bin/env python
"""Seed-compatible entry point: python scripts/collect_activations.py --model_type base --num_questions 10 --output_dir test_run_base --batch_size 4"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hf_introspect.commands.collect import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
