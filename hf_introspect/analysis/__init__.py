"""Analysis of collected runs: inspection and comparison, layerwise probes, directions, transfer,
and causal experiments (steering, ablation, patching). Modules import their heavy dependencies lazily."""
