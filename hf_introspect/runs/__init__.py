"""Runs on disk once written: reading (``load_run`` / ``layer_matrix``), merging, Hub export and
push, the seed's per-layer .npy export."""
