"""Directions in the residual stream: mean-difference and probe directions, their cosines, the
Gram-Schmidt unique parts of self vs other confidence, a permuted-label null, and save/load.

All functions take plain arrays: activations ``X`` of shape ``(n, hidden)`` (cast to float32/64
here, never summed in float16) and a target ``y`` of shape ``(n,)``. Directions are unit vectors in
raw activation space, signed so that moving along them raises the target.

Stacks of per-layer directions are ``(num_layers + 1, hidden)`` float32 arrays indexed by residual
index (0 = embeddings), NaN rows for layers not computed: the layout :class:`DirectionSet` saves and
the causal experiments read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import UserError

NPZ_NAME = "directions.npz"
JSON_NAME = "directions.json"
RESIDUAL_FLAG = 0.1  # a unique part whose residual norm is below this is "not distinct" (reference)
PCA_COMPONENTS = 100  # the reference pipeline: StandardScaler -> PCA(100) -> Ridge(alpha=1000)
RIDGE_ALPHA = 1000.0


def _f64(X) -> np.ndarray:
    return np.asarray(X, dtype=np.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0.0:
        raise UserError("a direction is all zeros (the target does not separate the activations); "
                        "pick another target or layer")
    return v / norm


def unit_rows(D: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; an all-zero row (activations that do not vary, e.g. the embedding
    of a readout token every prompt shares) becomes NaN: no direction there."""
    norm = np.linalg.norm(D, axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 1e-12 * max(1.0, float(np.nanmax(np.abs(D), initial=0.0))), D / norm, np.nan)


def quantile_masks(y, quantile: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks of the top and bottom ``quantile`` of ``y`` (ties at a threshold included).

    A two-valued target (``is_correct``) splits by value instead: positives vs negatives, whatever
    their shares (quartile thresholds would put most of one class in both groups).

    Example:
        >>> top, bottom = quantile_masks([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
        >>> top.nonzero()[0].tolist(), bottom.nonzero()[0].tolist()
        ([6, 7], [0, 1])
        >>> [int(m.sum()) for m in quantile_masks([1, 1, 1, 1, 1, 0])]
        [5, 1]
    """
    y = _f64(y)
    if not 0.0 < quantile <= 0.5:
        raise UserError(f"quantile must be in (0, 0.5] (got {quantile})")
    lo, hi = np.quantile(y, [quantile, 1.0 - quantile])
    values = np.unique(y)
    if len(values) == 2:
        lo, hi = values
    top, bottom = y >= hi, y <= lo
    if not top.any() or not bottom.any() or y[top].mean() <= y[bottom].mean():
        raise UserError("the target is constant over its top and bottom quartiles; a direction needs a target "
                        "that varies (pick another target)")
    return top, bottom


def meandiff_direction(X, y, quantile: float = 0.25) -> np.ndarray:
    """Unit vector mean(X | y in top ``quantile``) - mean(X | y in bottom ``quantile``) -> (d,) float64.

    Example:
        >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
        >>> meandiff_direction(X, [0, 0, 1, 1], quantile=0.5).tolist()
        [1.0, 0.0]
    """
    X = _f64(X)
    top, bottom = quantile_masks(y, quantile)
    return _unit(X[top].mean(0) - X[bottom].mean(0))


def projection_r2(X, y, direction) -> float:
    """Squared Pearson correlation between ``X @ direction`` and ``y`` (0 when either is constant).

    Example:
        >>> X = np.array([[1.0, 5.0], [2.0, 3.0], [3.0, 9.0]])
        >>> round(projection_r2(X, [10, 20, 30], [1.0, 0.0]), 6)
        1.0
    """
    return correlation_r2(_f64(X) @ _f64(direction), y)


def correlation_r2(a, b) -> float:
    """Squared Pearson correlation of two vectors (0 when either is constant).

    Example:
        >>> correlation_r2([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) > 0.98
        True
    """
    a, b = _f64(a), _f64(b)
    a, b = a - a.mean(), b - b.mean()
    denom = float(np.sqrt((a @ a) * (b @ b)))
    return 0.0 if denom == 0.0 else float((a @ b) / denom) ** 2


def cosine(a, b) -> float:
    """Cosine similarity of two vectors (NaN when either is NaN or zero).

    Example:
        >>> cosine([1.0, 0.0], [1.0, 1.0])
        0.7071067811865475
    """
    a, b = _f64(a), _f64(b)
    denom = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float("nan") if not np.isfinite(denom) or denom == 0.0 else float(a @ b / denom)


def unique_part(a, b) -> tuple[np.ndarray, float]:
    """Gram-Schmidt: the part of unit(a) orthogonal to unit(b), as a unit vector, and its norm.

    The norm (residual norm) is sqrt(1 - cos^2); below :data:`RESIDUAL_FLAG` the two directions are
    nearly the same and the unique part is mostly noise. Returns zeros and 0.0 when a is parallel to b.

    Example:
        >>> u, norm = unique_part([1.0, 1.0], [1.0, 0.0])
        >>> u.tolist(), round(norm, 4)
        ([0.0, 1.0], 0.7071)
    """
    a, b = _unit(_f64(a)), _unit(_f64(b))
    rest = a - (a @ b) * b
    norm = float(np.linalg.norm(rest))
    if norm < 1e-12:
        return np.zeros_like(a), 0.0
    return rest / norm, norm


def layer_cosines(A, B) -> np.ndarray:
    """Row-wise cosine of two stacks ``(L, d)`` -> ``(L,)``; NaN where either row is NaN.

    Example:
        >>> layer_cosines([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]).tolist()
        [1.0, 0.0]
    """
    A, B = _f64(A), _f64(B)
    denom = np.linalg.norm(A, axis=1) * np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ld,ld->l", A, B) / denom
    return np.where(denom > 0, out, np.nan)


def cosine_matrix(A, B=None) -> np.ndarray:
    """Cosines between every row of ``A`` (L, d) and every row of ``B`` (M, d; default A) -> (L, M).

    Used layer x layer within a pass (how stable a direction is across depth) and across passes.

    Example:
        >>> cosine_matrix([[1.0, 0.0], [1.0, 1.0]]).round(3).tolist()
        [[1.0, 0.707], [0.707, 1.0]]
    """
    A = _f64(A)
    B = A if B is None else _f64(B)
    na, nb = np.linalg.norm(A, axis=1), np.linalg.norm(B, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (A @ B.T) / np.outer(na, nb)
    return np.where(np.outer(na, nb) > 0, out, np.nan)


# ---------------------------------------------------------------------------------------------
# Batched fits: many targets (the real one and its permutations) at once
# ---------------------------------------------------------------------------------------------

def meandiff_directions(X, Y, quantile: float = 0.25) -> np.ndarray:
    """Mean-diff directions for each column of ``Y`` (n, P) at once -> (P, d) unit rows.

    Example:
        >>> X = np.array([[0.0, 0.0], [0.0, 1.0], [2.0, 0.0], [2.0, 1.0]])
        >>> meandiff_directions(X, np.array([[0, 1], [0, 0], [1, 1], [1, 0]]), 0.5).round(3).tolist()
        [[1.0, 0.0], [0.0, -1.0]]
    """
    X, Y = _f64(X), _f64(Y)
    # (P, n) weights: +1/|top| on the top rows, -1/|bottom| on the bottom rows of each column
    W = np.empty((Y.shape[1], Y.shape[0]))
    for j in range(Y.shape[1]):
        top, bottom = quantile_masks(Y[:, j], quantile)
        W[j] = top / top.sum() - bottom / bottom.sum()
    return unit_rows(W @ X)                                    # (P, d)


def reference_fit(X, Y, n_components: int = PCA_COMPONENTS, alpha: float = RIDGE_ALPHA, device=None):
    """The reference probe (StandardScaler, std floored at 1e-6 -> PCA(k) -> Ridge(alpha)) for every
    column of ``Y`` (n, P) at once -> (mean (d,), scale (d,), coef (d, P) on the standardised input,
    intercept (P,)).

    PCA does not depend on the target, so one eigendecomposition of the smaller Gram matrix (A-probe's
    ``left_basis``) serves every column: with U, s^2 the top-k left singular vectors and squared
    singular values of the standardised Z, coef = Z' U diag(1/(s^2 + alpha)) U' (y - ybar), which is
    the ridge solution on the PCA scores mapped back through the components (tests compare it with
    scikit-learn's Pipeline).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(50, 3)); y = X @ np.array([1.0, -2.0, 0.0])
        >>> mean, scale, coef, b = reference_fit(X, y[:, None], 3, 1e-9)
        >>> np.allclose(((X - mean) / scale) @ coef[:, 0] + b[0], y)
        True
    """
    from .linear_probe import left_basis

    X = _f64(X)
    Y = _f64(Y).reshape(len(X), -1)
    mean, scale = X.mean(0), np.maximum(X.std(0), 1e-6)
    Z = (X - mean) / scale                                       # (n, d) standardised
    U, s2 = left_basis(Z, device, top=min(n_components, *Z.shape))   # (n, k), (k,)
    ybar = Y.mean(0)
    W = (U.T @ (Y - ybar)) / (s2 + alpha)[:, None]               # (k, P)
    return mean, scale, Z.T @ (U @ W), ybar


def probe_directions(X, Y, n_components: int = PCA_COMPONENTS, alpha: float = RIDGE_ALPHA, device=None) -> np.ndarray:
    """The reference probe's direction (weights mapped back through the PCA and divided by the
    scaler's scale, unit norm) for each column of ``Y`` (n, P) -> (P, d); one eigendecomposition.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(200, 5)); y = X[:, 2] + 0.1 * rng.normal(size=200)
        >>> int(np.argmax(np.abs(probe_directions(X, y[:, None], 3, 1.0)[0])))
        2
    """
    _, scale, coef, _ = reference_fit(X, Y, n_components, alpha, device)
    return unit_rows(coef.T / scale)                            # (P, d) raw-space weights


def probe_direction(X, y, *, method: str = "ep", **options) -> np.ndarray:
    """A probe's direction (unit, raw activation space) -> (d,) float64.

    ``method="ep"`` is the reference pipeline (:func:`probe_directions`); any other method is
    A-probe's ``fit_probe(X, y, method=...).direction``.

    Example:
        >>> rng = np.random.default_rng(1)
        >>> X = rng.normal(size=(300, 4)); y = X @ np.array([0.0, 3.0, 0.0, 0.0]) + rng.normal(size=300)
        >>> round(cosine(probe_direction(X, y, n_components=4, alpha=1.0), [0, 1, 0, 0]), 2)
        1.0
    """
    if method == "ep":
        return probe_directions(X, _f64(y)[:, None], **options)[0]
    from .linear_probe import fit_probe

    return _unit(_f64(fit_probe(np.asarray(X, dtype=np.float32), _f64(y), method=method, **options).direction))


def permuted_cosine_null(Xa, ya, Xb=None, yb=None, *, kind: str = "meandiff", permutations: int = 100,
                         seed: int = 0, **options) -> np.ndarray:
    """Cosines between directions fitted on independently permuted targets -> (permutations,).

    With ``Xb``/``yb`` (another pass, e.g. other_conf): cosine between pass a's and pass b's
    directions, each fitted on its own shuffled target: how close two directions of this data come
    by chance (high-variance axes pull unrelated directions together). Without them: cosine
    between the mean-diff and the probe direction of pass a on one shuffled target (``kind`` is
    then ignored).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> X = rng.normal(size=(100, 50)); y = rng.normal(size=100)
        >>> null = permuted_cosine_null(X, y, X, y, permutations=20)
        >>> null.shape, bool(np.abs(null).max() < 0.6)
        ((20,), True)
    """
    rng = np.random.default_rng(seed)
    ya = _f64(ya)
    Ya = np.stack([rng.permutation(ya) for _ in range(permutations)], axis=1)      # (n, P)
    fit = {"meandiff": lambda X, Y: meandiff_directions(X, Y, options.get("quantile", 0.25)),
           "probe": lambda X, Y: probe_directions(X, Y, options.get("n_components", PCA_COMPONENTS),
                                                  options.get("alpha", RIDGE_ALPHA))}
    if kind not in fit:
        raise UserError(f"unknown direction kind {kind!r}; use 'meandiff' or 'probe'")
    if Xb is None:  # mean-diff vs probe on the same shuffled target
        return np.einsum("pd,pd->p", fit["meandiff"](Xa, Ya), fit["probe"](Xa, Ya))
    Da = fit[kind](Xa, Ya)
    yb = _f64(yb)
    Yb = np.stack([rng.permutation(yb) for _ in range(permutations)], axis=1)
    Db = fit[kind](Xb, Yb)
    return np.einsum("pd,pd->p", Da, Db)


# ---------------------------------------------------------------------------------------------
# DirectionSet: the saved form
# ---------------------------------------------------------------------------------------------

@dataclass
class DirectionSet:
    """Per-layer directions of one run, by (pass, method).

    Args:
        vectors: ``(pass, method) -> (num_layers + 1, hidden)`` float32, NaN rows for layers not
            computed. A plain ``.npy`` of shape ``(hidden,)`` loads as one layer-independent row
            (``(1, hidden)``, ``meta["any_layer"] = True``) under pass ``"file"``, method ``"npy"``.
        scores: ``(pass, method) -> (num_layers + 1,)`` float64 per-layer score (NaN where none):
            test R^2 of the probe, r^2 of the projection for mean-diff.
        meta: run id / path, model, target, position, score names... (JSON-serialisable).

    Example:
        >>> v = np.full((3, 2), np.nan, np.float32); v[1] = [0.6, 0.8]
        >>> ds = DirectionSet({("mcq", "meandiff"): v})
        >>> ds.layers, ds.layer(1).tolist(), ds.num_layers
        ([1], [0.6000000238418579, 0.800000011920929], 2)
    """

    vectors: dict[tuple[str, str], np.ndarray]
    scores: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def keys(self) -> list[tuple[str, str]]:
        return list(self.vectors)

    @property
    def passes(self) -> list[str]:
        return list(dict.fromkeys(p for p, _ in self.vectors))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(m for _, m in self.vectors))

    @property
    def num_layers(self) -> int:
        return next(iter(self.vectors.values())).shape[0] - 1

    @property
    def hidden(self) -> int:
        return next(iter(self.vectors.values())).shape[1]

    @property
    def layers(self) -> list[int]:
        """Residual indices computed in at least one (pass, method)."""
        done = np.zeros(self.num_layers + 1, bool)
        for v in self.vectors.values():
            done |= ~np.isnan(v).any(axis=1)
        return np.flatnonzero(done).tolist()

    def _key(self, pass_name: str | None, method: str | None) -> tuple[str, str]:
        keys = [k for k in self.vectors if (pass_name is None or k[0] == pass_name)
                and (method is None or k[1] == method)]
        if len(keys) != 1:
            raise UserError(f"directions hold {[f'{p}/{m}' for p, m in self.vectors]}; "
                            f"pick one with pass={pass_name!r}, method={method!r}")
        return keys[0]

    def get(self, pass_name: str | None = None, method: str | None = None) -> np.ndarray:
        """``(num_layers + 1, hidden)`` float32 of one (pass, method); either may be omitted when unique."""
        return self.vectors[self._key(pass_name, method)]

    def layer(self, layer: int, pass_name: str | None = None, method: str | None = None) -> np.ndarray:
        """The unit direction at residual index ``layer`` -> (hidden,) float32."""
        stack = self.get(pass_name, method)
        if self.meta.get("any_layer"):
            return stack[0]
        if not 0 <= layer < stack.shape[0] or np.isnan(stack[layer]).any():
            computed = np.flatnonzero(~np.isnan(stack).any(axis=1)).tolist()
            raise UserError(f"no direction for layer {layer} in these directions; computed layers: {computed}")
        return stack[layer]

    def score(self, pass_name: str | None = None, method: str | None = None) -> np.ndarray:
        key = self._key(pass_name, method)
        return self.scores.get(key, np.full(self.vectors[key].shape[0], np.nan))


def _jsonable(x):
    """NaN -> None so the sidecar is strict JSON."""
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (float, np.floating)):
        return None if not np.isfinite(x) else float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


def save_directions(folder, dirs: DirectionSet) -> Path:
    """Write ``folder/directions.npz`` (the arrays, bit-exact) and ``folder/directions.json`` (metadata
    and per-layer scores, readable). Returns the folder.

    Example:
        >>> save_directions("dirs", DirectionSet({("mcq", "probe"): np.zeros((31, 576), np.float32)}))  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for (p, m), v in dirs.vectors.items():
        if "." in p or "." in m:
            raise UserError(f"pass and method names may not contain '.' (got {p!r}, {m!r})")
        arrays[f"vectors.{p}.{m}"] = np.asarray(v, dtype=np.float32)
    for (p, m), s in dirs.scores.items():
        arrays[f"scores.{p}.{m}"] = np.asarray(s, dtype=np.float64)
    np.savez(folder / NPZ_NAME, **arrays)
    sidecar = {"format": "hf_introspect.directions/1", **dirs.meta,
               "num_layers": dirs.num_layers, "hidden": dirs.hidden, "layers": dirs.layers,
               "entries": [{"pass": p, "method": m,
                            "layers": np.flatnonzero(~np.isnan(v).any(axis=1)).tolist(),
                            "score": dirs.scores.get((p, m))} for (p, m), v in dirs.vectors.items()]}
    (folder / JSON_NAME).write_text(json.dumps(_jsonable(sidecar), indent=1) + "\n")
    return folder


def load_directions(path) -> DirectionSet:
    """Read directions written by :func:`save_directions` (the folder or its ``.npz``), or a plain
    ``.npy`` of shape ``(hidden,)`` or ``(num_layers + 1, hidden)``.

    Example:
        >>> dirs = load_directions("dirs")                      # doctest: +SKIP
        >>> dirs.layer(15, "self_conf", "probe").shape          # doctest: +SKIP
        (576,)
    """
    path = Path(path)
    if path.is_dir():
        path = path / NPZ_NAME
    if not path.is_file():
        raise UserError(f"{path}: no such directions file; pass a folder written by `hf-introspect directions "
                        f"--out`, its {NPZ_NAME}, or a .npy")
    if path.suffix == ".npy":
        v = np.load(path).astype(np.float32)
        if v.ndim not in (1, 2):
            raise UserError(f"{path} has shape {v.shape}; a direction file is (hidden,) or (num_layers + 1, hidden)")
        meta = {"source": str(path), "any_layer": v.ndim == 1}
        return DirectionSet({("file", "npy"): v.reshape(1, -1) if v.ndim == 1 else v}, meta=meta)
    vectors, scores = {}, {}
    with np.load(path) as z:
        for name in z.files:
            kind, p, m = name.split(".", 2)
            (vectors if kind == "vectors" else scores)[(p, m)] = z[name]
    if not vectors:
        raise UserError(f"{path} holds no direction arrays")
    sidecar = path.with_name(JSON_NAME)
    meta = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    for k in ("format", "num_layers", "hidden", "layers", "entries"):
        meta.pop(k, None)
    return DirectionSet(vectors, scores, meta)
