"""`hf-introspect inspect`: the summary / comparison of runs, its statistics and its plots."""
