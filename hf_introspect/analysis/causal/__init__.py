"""Causal experiments with the run's own model: steering, ablation and activation patching at the
readout token (hooks, a KV-cache-reusing runner, effects and plots). Import the submodules."""
