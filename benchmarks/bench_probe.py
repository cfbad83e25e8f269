"""Probe speed: hf_introspect's split engine vs the reference's scikit-learn per-layer loop.

Synthetic activations at 8B shape (1,000 questions x 4,096 dims x 33 layers, float16, written once
to a raw file and read back one layer at a time, so at most a couple of layers are ever in memory)
with a planted target: a latent direction whose amplitude grows with depth (R^2 ~0 in early layers,
~0.75 in late ones), over a power-law spectrum, per-dimension scales and a few outlier dimensions.

Sides, on the same splits (``make_splits(1000, 100, 0.2, seed)``):

* **sklearn**: the reference pipeline per split and layer, ``Pipeline(StandardScaler(), PCA(100),
  Ridge(alpha=1000))`` (PCA's default ``svd_solver``: randomized at this shape), fit + predict +
  ``r2_score``. At ~0.5 s per split x layer the full 33 x 100 takes ~26 min, so it runs on a subset
  (``--sk_layers`` x ``--sk_splits``) and the full time is extrapolated (printed as such).
* **ep**: ``score_splits(method="ep")``, the same pipeline (ours), on the subset's layers x all splits;
  R^2 compared with sklearn's on the shared splits.
* **ridge** (default method): all layers x all splits, with and without a permutation null; its
  penalty criterion (GCV) vs exact leave-one-out on a few layers; and ``probe_sweep``, the whole
  per-layer work of the ``probe`` command (splits, null, mean-diff split scores, probe/mean-diff cosine).

    python benchmarks/bench_probe.py                  # ~5-10 min on the 2-core CPU
    python benchmarks/bench_probe.py --quick          # smaller subset, no full ep pass
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

N, D, LAYERS = 1000, 4096, 33


def planted_amplitude(layer: int, n_layers: int = LAYERS) -> float:
    """Signal amplitude of ``layer``: a logistic rise centred at 40% depth."""
    return float(1.0 / (1.0 + np.exp(-(layer - 0.4 * n_layers) / 2.0)))


def write_synthetic(path: Path, n: int = N, d: int = D, n_layers: int = LAYERS, seed: int = 0) -> np.ndarray:
    """Write (n_layers, n, d) float16 activations to ``path`` (raw, C order); return the target (n,)."""
    rng = np.random.default_rng(seed)
    r = 256
    F = rng.normal(size=(n, r)).astype(np.float32)  # latent factors shared by the layers
    spectrum = (np.arange(1, r + 1) ** -0.6).astype(np.float32) * 6.0
    u = rng.normal(size=n).astype(np.float32)  # the planted latent
    y = u + 0.55 * rng.normal(size=n)  # R^2 ceiling ~ 1 / 1.3 = 0.77
    dim_scale = np.exp(rng.normal(scale=0.5, size=d)).astype(np.float32)
    outliers = rng.choice(d, 4, replace=False)
    dim_scale[outliers] *= 30.0
    offset = rng.normal(scale=0.5, size=d).astype(np.float32)
    with open(path, "wb") as fh:
        for layer in range(n_layers):
            A = rng.normal(size=(r, d)).astype(np.float32) / np.sqrt(r)
            v = rng.normal(size=d).astype(np.float32)
            v /= np.linalg.norm(v)
            X = (F * spectrum) @ A + rng.normal(size=(n, d)).astype(np.float32) * 0.5
            X += 4.0 * planted_amplitude(layer, n_layers) * np.outer(u, v) * np.sqrt(d) / 8.0
            X = X * dim_scale + offset
            fh.write(X.astype(np.float16).tobytes())
    return y


def read_layer(path: Path, layer: int, n: int = N, d: int = D) -> np.ndarray:
    """One layer (n, d) float16, read (not mapped) from the raw file."""
    return np.fromfile(path, dtype=np.float16, count=n * d, offset=layer * n * d * 2).reshape(n, d)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load() -> str:
    return "load %.1f" % os.getloadavg()[0]


class RawRun:
    """The raw float16 file behind the ``RunData`` calls ``probe_sweep`` makes (one pass, one position),
    so the sweep the ``probe`` command runs is timed on 8B-shaped layers read one at a time."""

    def __init__(self, path: Path, y: np.ndarray):
        from hf_introspect.analysis.targets import Target

        self.path, self.source = path, str(path)
        self._target = Target("entropy", "regression", y, np.ones(len(y), dtype=bool))

    def target(self, pass_name, spec):
        return self._target

    def n_questions(self, pass_name):
        return N

    def layers(self, pass_name):
        return list(range(LAYERS))

    def check_layers(self, pass_name, layers):
        return list(layers)

    def position_rows(self, pass_name, position="answer"):
        return None

    def matrix(self, pass_name, layer, position="answer", rows=None):
        X = read_layer(self.path, layer).astype(np.float32)  # (n, d), as RunData.matrix returns
        return X if rows is None else X[rows]


def sklearn_scores(X16: np.ndarray, y: np.ndarray, splits, svd_solver: str = "auto") -> tuple[np.ndarray, float]:
    """The reference loop on one layer: R^2 per split and the seconds it took. ``svd_solver="auto"``
    is how the reference runs it (randomized PCA at this shape: itself an approximation);
    ``"full"`` is the exact pipeline the equality check compares against."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.metrics import r2_score
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    X = X16.astype(np.float32)
    out = []
    for train, test in splits:
        model = Pipeline([("scale", StandardScaler()), ("pca", PCA(100, svd_solver=svd_solver)), ("ridge", Ridge(alpha=1000.0))])
        model.fit(X[train], y[train])
        out.append(r2_score(y[test], model.predict(X[test])))
    return np.array(out), time.perf_counter() - t0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="/tmp/bench_probe_acts.f16", help="raw float16 file (written if missing)")
    parser.add_argument("--splits", type=int, default=100)
    parser.add_argument("--sk_layers", default="4,16,28", help="layers of the sklearn subset")
    parser.add_argument("--sk_splits", type=int, default=10, help="splits of the sklearn subset")
    parser.add_argument("--permutations", type=int, default=100, help="null copies in the ridge pass with a null")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="skip the ep pass over all layers")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    import torch
    from threadpoolctl import threadpool_limits

    from hf_introspect.analysis.linear_probe import fit_probe
    from hf_introspect.analysis.split_fits import make_splits, score_splits

    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy/scikit-learn's BLAS: the same number of threads as torch
    path = Path(args.data)
    t0 = time.perf_counter()
    y_path = path.with_suffix(".target.npy")
    if not (path.exists() and y_path.exists() and path.stat().st_size == LAYERS * N * D * 2):
        np.save(y_path, write_synthetic(path))
        print(f"wrote {path} ({path.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.1f} s")
    y = np.load(y_path)
    splits = make_splits(N, args.splits, 0.2, seed=args.seed)
    sk_layers = [int(v) for v in args.sk_layers.split(",")]
    sub = splits[:args.sk_splits]
    print(f"{N} questions x {D} dims x {LAYERS} layers float16; {args.splits} splits (80/20, seed {args.seed}); "
          f"torch {torch.__version__}, {args.threads} threads; {load()}")

    # 1. sklearn on the subset, interleaved per layer with ep on the same layer (same load)
    rows, nested_gap = [], []
    sk_time = ep_time = 0.0
    base_rss = rss_mb()
    for layer in sk_layers:
        X16 = read_layer(path, layer)
        sk, dt = sklearn_scores(X16, y, sub)
        sk_time += dt
        t1 = time.perf_counter()
        ep = score_splits(X16, y, splits, method="ep")
        ep_time += time.perf_counter() - t1
        sk_full, _ = sklearn_scores(X16, y, sub, svd_solver="full")
        rows.append((layer, sk.mean(), ep.scores[:len(sub)].mean(), ep.scores.mean(), dt / len(sub), sk_full))
        # the default's layer-wide standardisation and LOO penalty vs a strictly nested fit per split
        from sklearn.metrics import r2_score

        shared = score_splits(X16, y, sub).scores
        nested = [r2_score(y[te], fit_probe(X16[tr], y[tr]).predict(X16[te])) for tr, te in sub]
        nested_gap.append(float(np.mean(shared) - np.mean(nested)))
        same = ep.scores[:len(sub)]
        print(f"  layer {layer:2d}: sklearn R^2 {sk.mean():.4f} ({dt / len(sub):.3f} s/split), ep same splits "
              f"{same.mean():.4f} (diff {same.mean() - sk.mean():+.1e}, max per split {np.abs(same - sk).max():.1e}); "
              f"sklearn exact PCA {sk_full.mean():.4f} (ep diff {same.mean() - sk_full.mean():+.1e}, max per split "
              f"{np.abs(same - sk_full).max():.1e}); ep {args.splits} splits {ep.scores.mean():.4f}; {load()}")
    sk_per = sk_time / (len(sk_layers) * len(sub))
    ep_per = ep_time / (len(sk_layers) * len(splits))
    print(f"sklearn loop: {sk_per:.3f} s per split x layer (measured on {len(sk_layers)} layers x {len(sub)} splits); "
          f"extrapolated to {LAYERS} x {args.splits}: {sk_per * LAYERS * args.splits / 60:.1f} min")
    print(f"ep (ours):    {ep_per * 1000:.1f} ms per split x layer ({len(sk_layers)} layers x {args.splits} splits); "
          f"speed-up {sk_per / ep_per:.1f}x; max |mean R^2 diff| per layer {max(abs(r[2] - r[1]) for r in rows):.1e} "
          f"vs the reference's randomized PCA, {max(abs(r[2] - r[5].mean()) for r in rows):.1e} vs the exact pipeline")

    print(f"ridge default (layer-wide scaler, GCV penalty inside each training split) vs strictly nested ridge "
          f"(own scaler per split, RidgeCV's LOO penalty on its training rows), same "
          f"{len(sub)} splits: mean R^2 difference per layer {', '.join(f'{g:+.1e}' for g in nested_gap)}")

    # 2. the default method over every layer, without and with a null
    for perms in (0, args.permutations):
        t1 = time.perf_counter()
        means = []
        for layer in range(LAYERS):
            res = score_splits(read_layer(path, layer), y, splits, permutations=perms, seed=args.seed)
            means.append(res.mean)
        dt = time.perf_counter() - t1
        best = int(np.argmax(means))
        print(f"ridge (default), {LAYERS} layers x {args.splits} splits, {perms} permutations: {dt:.1f} s "
              f"({dt / LAYERS:.2f} s/layer); best layer {best} R^2 {means[best]:.3f}; layer 0 {means[0]:.3f}; "
              f"peak RSS {rss_mb():.0f} MB; {load()}")
    # 2b. the penalty criterion: GCV (default) vs exact LOO inside each training split
    tg = tl = 0.0
    diffs = []
    for layer in sk_layers:
        X16 = read_layer(path, layer)
        t1 = time.perf_counter()
        g = score_splits(X16, y, splits)
        tg += time.perf_counter() - t1
        t1 = time.perf_counter()
        loo = score_splits(X16, y, splits, selection="loo")
        tl += time.perf_counter() - t1
        diffs.append(g.mean - loo.mean)
    print(f"penalty by GCV vs exact LOO inside each training split ({len(sk_layers)} layers x {args.splits} splits): "
          f"{tg / len(sk_layers):.2f} vs {tl / len(sk_layers):.2f} s/layer ({tl / tg:.1f}x); mean R^2 GCV - LOO "
          f"{', '.join(f'{d:+.1e}' for d in diffs)}; {load()}")

    # 3. what `hf-introspect probe` does per layer: the splits and the null as above, plus the mean-diff
    # direction's split scores and the probe/mean-diff cosine (fitted on all questions)
    from hf_introspect.analysis.layer_sweep import probe_sweep

    for perms in (0, args.permutations):
        res = probe_sweep(RawRun(path, y), "mcq", "entropy", n_splits=args.splits, permutations=perms, seed=args.seed)
        best = res.best
        print(f"probe_sweep (the probe command's work), {LAYERS} layers x {args.splits} splits, {perms} permutations: "
              f"{res.seconds:.1f} s ({res.seconds / LAYERS:.2f} s/layer); best layer {best.layer} R^2 {best.score:.3f} "
              f"[{best.ci_low:.3f}, {best.ci_high:.3f}], null p95 {best.null_p95:.3f}, mean-diff r^2 "
              f"{best.meandiff_score:.3f}, cos {best.cos_probe_meandiff:.3f}; peak RSS {rss_mb():.0f} MB; {load()}")
    if not args.quick:
        t1 = time.perf_counter()
        for layer in range(LAYERS):
            score_splits(read_layer(path, layer), y, splits, method="ep")
        dt = time.perf_counter() - t1
        print(f"ep, {LAYERS} layers x {args.splits} splits: {dt:.1f} s; vs sklearn extrapolated "
              f"{sk_per * LAYERS * args.splits / dt:.1f}x; {load()}")
    print(f"peak RSS {rss_mb():.0f} MB, {base_rss:.0f} MB before the first layer (one layer float16 = "
          f"{N * D * 2 / 1e6:.1f} MB; all layers = {LAYERS * N * D * 2 / 1e6:.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
