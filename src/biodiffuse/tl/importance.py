"""Gene importance of an expression-conditioned velocity field, and its stability.

GeneFlow (section 4.3, appendix C) ranks genes by the gradient of the predicted velocity's
squared L2 norm with respect to the input expression, averaged in absolute value over
several flow times and noise draws, and checks the ranking by the hypergeometric
significance of the overlap between top-k lists of different models / splits / samples.
:func:`gene_importance` is model-agnostic: it needs only the velocity callable and, where the
network embeds the expression first, the encoder.

Call convention (as :class:`biodiffuse.diffusion.FlowLoss`): ``velocity(x_t, t, cond)`` with
``x_t`` of shape ``(B, *image_shape)``, ``t`` of shape ``(B,)`` in ``[0, 1]`` (``t = 0`` noise,
``t = 1`` data) and ``cond = encode(x)`` (or the expression ``x`` itself), returning a tensor
of ``x_t``'s shape.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scipy.stats import hypergeom

from ..diffusion import RowNoise, check_count, row_seeds

__all__ = ["gene_importance", "importance_stability", "top_overlap", "write_importance"]


def _modules(*objs: Any) -> list[torch.nn.Module]:
    """The torch modules behind ``objs`` (a module, or a bound method of one)."""
    out: list[torch.nn.Module] = []
    for obj in objs:
        mod = obj if isinstance(obj, torch.nn.Module) else getattr(obj, "__self__", None)
        if isinstance(mod, torch.nn.Module) and not any(mod is m for m in out):
            out.append(mod)
    return out


def _rows(x: Any, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of ``x`` as a dense float array (sparse rows densified per chunk)."""
    part = x[start:stop]
    if sparse.issparse(part):
        part = part.toarray()
    elif isinstance(part, torch.Tensor):
        part = part.detach().cpu().numpy()
    return np.asarray(part, dtype=np.float64)


def gene_importance(
    velocity: Callable[..., torch.Tensor],
    x_genes: Any,
    *,
    image_shape: Sequence[int],
    encode: Callable[[torch.Tensor], Any] | None = None,
    images: Any = None,
    mask: Any = None,
    keys: Sequence[Any] | None = None,
    n_t: int = 8,
    n_noise: int = 4,
    t_range: tuple[float, float] = (0.0, 1.0),
    norm: Literal["squared", "l2"] = "squared",
    batch_size: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Mean absolute gradient of the velocity norm with respect to each input gene.

    For every row ``x`` of ``x_genes`` (a cell, or a tile's cells), ``n_t`` times ``t`` are
    drawn stratified in ``t_range`` (one uniform draw in each of ``n_t`` equal strata) and
    ``n_noise`` standard normal images ``x0``; for each of the ``n_t * n_noise`` pairs the
    score ``s = ||v(x_t, t, encode(x))||^2`` (summed over the image; ``norm="l2"``: the norm
    itself) is differentiated with respect to ``x``. The result is the mean of ``|ds/dx|``
    over rows, times and noise draws (and over any axes of ``x_genes`` between rows and genes;
    with ``mask``, over real cells only).

    The point ``x_t``: with ``images`` (the real tiles of the rows, in the network's data
    scale), the training path ``x_t = (1 - t) x0 + t x1``, so the network is probed where it
    was trained; without, the noise image itself, ``x_t = x0`` at every ``t`` (data-free, the
    sampler's start state; off the training path for ``t > 0``). The GeneFlow paper does not
    say which point its analysis used; pass ``images`` where tiles exist.

    Parameters
    ----------
    velocity
        ``velocity(x_t, t, cond)`` (module docstring); must treat rows independently.
    x_genes
        Expression, shape ``(N, G)`` or ``(N, ..., G)`` (e.g. ``(N, C_max, G)`` for tiles of
        several cells): numpy / torch / scipy sparse (densified chunk by chunk) / DataFrame.
    image_shape
        Shape of one image, e.g. ``(C, H, W)``.
    encode
        Builds the condition from the expression (differentiable); default: the expression.
    images
        Optional ``(N, *image_shape)`` data images ``x1`` of the rows (see above).
    mask
        For tiles of several cells, ``x_genes`` of shape ``(N, C_max, G)``: a boolean
        ``(N, C_max)`` array, True for real cells. The encoder is then called as
        ``encode(x, mask)`` (as :class:`biodiffuse.nn.RNAEncoder`) and the mean runs over real
        cells only (padded cells, whose gradient is zero, do not dilute it).
    keys
        One stable key per row for its random stream (e.g. ``obs_names``); default the row
        position. A row's draws depend only on ``seed`` and its key, not on the batch.
    n_t, n_noise
        Times and noise images per row.
    t_range
        ``(lo, hi)`` within ``[0, 1]``, ``lo <= hi``.
    norm
        ``"squared"`` (the paper's squared L2 norm) or ``"l2"``.
    batch_size
        Rows per network call (memory does not grow with ``N``).
    seed
        Seed of the per-row streams (:func:`biodiffuse.diffusion.row_seeds`); the global
        random state is neither used nor changed.
    device, dtype
        Where and in which dtype the network is evaluated (the noise is drawn on the CPU).

    Returns
    -------
    numpy.ndarray
        Shape ``(G,)``, float64, non-negative.

    Notes
    -----
    Torch modules passed as ``velocity`` / ``encode`` (or whose bound methods are passed) are
    put in eval mode for the computation (dropout off, batch norm on running statistics) and
    every submodule is left in the train / eval mode it had. For plain functions that wrap
    networks, set the mode yourself. Parameter ``.grad`` fields are not touched.

    Examples
    --------
    >>> W = torch.randn(3 * 8 * 8, 20)
    >>> def velocity(x_t, t, cond):                  # a toy field: (B, 3, 8, 8) from (B, 20) genes
    ...     return (cond @ W.T).reshape(-1, 3, 8, 8) - x_t
    >>> scores = bd.tl.gene_importance(velocity, np.random.rand(100, 20), image_shape=(3, 8, 8), n_t=8)
    >>> scores.shape
    (20,)
    """
    n_t, n_noise, batch_size = check_count(n_t, "n_t"), check_count(n_noise, "n_noise"), check_count(batch_size, "batch_size")
    lo, hi = (float(v) for v in t_range)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"t_range must satisfy 0 <= lo <= hi <= 1, got {t_range!r}.")
    if norm not in ("squared", "l2"):
        raise ValueError(f"norm must be 'squared' or 'l2', got {norm!r}.")
    image_shape = tuple(int(s) for s in image_shape)
    if isinstance(x_genes, pd.DataFrame):
        x_genes = x_genes.to_numpy()
    shape = tuple(x_genes.shape)
    if len(shape) < 2 or shape[0] == 0 or shape[-1] == 0:
        raise ValueError(f"x_genes must have shape (N, ..., G) with N, G > 0, got {shape}.")
    n = shape[0]
    if images is not None and tuple(images.shape) != (n, *image_shape):
        raise ValueError(f"images must have shape {(n, *image_shape)}, got {tuple(images.shape)}.")
    if mask is not None:
        mask = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask, dtype=bool)
        if len(shape) != 3 or mask.shape != shape[:2]:
            raise ValueError(f"mask must have shape (N, C_max) = {shape[:2]} for x_genes of shape (N, C_max, G), "
                             f"got {mask.shape} for {shape}.")
        if encode is None:
            raise ValueError("mask needs encode: it is called as encode(x, mask).")
    keys = list(range(n)) if keys is None else list(keys)
    if len(keys) != n:
        raise ValueError(f"keys must have one entry per row ({n}), got {len(keys)}.")

    mods = _modules(velocity, encode)
    modes = [(m, m.training) for mod in mods for m in mod.modules()]
    total = torch.zeros(shape[-1], dtype=torch.float64)
    try:
        for mod in mods:
            mod.eval()
        with torch.enable_grad():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                total += _chunk(velocity, encode, x_genes, images, mask, keys, start, stop, image_shape,
                                n_t, n_noise, lo, hi, norm, seed, device, dtype)
    finally:
        for m, training in modes:
            m.train(training)
    entries = int(mask.sum()) if mask is not None else n * int(np.prod(shape[1:-1], dtype=np.int64))
    return (total / (max(entries, 1) * n_t * n_noise)).numpy()


def _chunk(velocity, encode, x_genes, images, mask, keys, start, stop, image_shape, n_t, n_noise, lo, hi, norm,
           seed, device, dtype) -> torch.Tensor:
    """Sum over rows ``start:stop``, times and noise draws of ``|d score / d x|``, shape (G,)."""
    xs = _rows(x_genes, start, stop)
    if not np.isfinite(xs).all():
        raise ValueError(f"x_genes has NaN / inf values in rows {start}:{stop}.")
    gens = RowNoise(row_seeds(seed, keys[start:stop])).generators
    # Each row's stream: first its n_t stratum offsets, then its n_noise images.
    u = torch.stack([torch.rand(n_t, generator=g, dtype=torch.float64) for g in gens])
    x0 = torch.stack([torch.randn((n_noise, *image_shape), generator=g) for g in gens])
    t_all = (lo + (hi - lo) * (torch.arange(n_t, dtype=torch.float64) + u) / n_t).to(device, dtype)
    x0 = x0.to(device, dtype)
    x1 = None
    if images is not None:
        x1 = torch.as_tensor(_rows(images, start, stop)).to(device, dtype)
    x = torch.as_tensor(xs).to(device, dtype).requires_grad_(True)
    if mask is not None:
        cond = encode(x, torch.as_tensor(mask[start:stop]).to(device))
    else:
        cond = encode(x) if encode is not None else x
    acc = torch.zeros(xs.shape[-1], dtype=torch.float64, device=device)
    pairs = list(itertools.product(range(n_t), range(n_noise)))
    for i, (j, k) in enumerate(pairs):
        t = t_all[:, j]
        z = x0[:, k]
        xt = z if x1 is None else (1 - t).view(-1, *[1] * len(image_shape)) * z + t.view(-1, *[1] * len(image_shape)) * x1
        v = velocity(xt, t, cond)
        if tuple(v.shape) != tuple(xt.shape):
            raise ValueError(f"velocity returned shape {tuple(v.shape)} for x_t of shape {tuple(xt.shape)}.")
        flat = v.reshape(v.shape[0], -1)
        score = (flat**2).sum(1) if norm == "squared" else torch.linalg.vector_norm(flat, dim=1)
        if not score.requires_grad:
            raise RuntimeError("The velocity does not depend on the expression through autograd "
                               "(computed under torch.no_grad() or detached?).")
        (grad,) = torch.autograd.grad(score.sum(), x, retain_graph=i < len(pairs) - 1, allow_unused=True)
        if grad is not None:
            acc += grad.abs().to(torch.float64).reshape(-1, grad.shape[-1]).sum(0)
    return acc.cpu()


def write_importance(
    adata: Any,
    scores: pd.Series | np.ndarray,
    *,
    genes: Sequence[str] | None = None,
    key_added: str = "GeneFlow_importance",
    overwrite: bool = False,
) -> None:
    """Write importance scores into ``adata.var[key_added]``, matched by gene name.

    Parameters
    ----------
    adata
        The AnnData whose ``var_names`` name the genes (must be unique).
    scores
        A Series indexed by gene name, or an array with ``genes`` naming its entries.
    genes
        Names of ``scores`` when it is an array (ignored for a Series).
    key_added
        Column of ``adata.var``.
    overwrite
        Replace an existing column of that name.

    Notes
    -----
    Every scored gene must be in ``adata.var_names``; genes of ``adata`` without a score
    (e.g. not in the model's panel) get NaN. Nothing is written when an error is raised.

    Examples
    --------
    >>> scores = pd.Series([0.8, 0.1], index=["CD19", "MS4A1"])
    >>> bd.tl.write_importance(adata, scores, key_added="my_importance")       # adata.var["my_importance"]
    >>> bd.tl.write_importance(adata, values, genes=model.genes, overwrite=True)  # an array named by genes
    """
    if isinstance(scores, pd.Series):
        series = scores.astype(np.float64)
    else:
        if genes is None:
            raise ValueError("scores is an array: pass genes=... naming its entries (matching is by name).")
        vals = np.asarray(scores, dtype=np.float64).ravel()
        if len(genes) != len(vals):
            raise ValueError(f"genes has {len(genes)} names for {len(vals)} scores.")
        series = pd.Series(vals, index=pd.Index([str(g) for g in genes]))
    if series.index.has_duplicates:
        dup = series.index[series.index.duplicated()].unique().tolist()[:5]
        raise ValueError(f"Scores name some genes twice: {dup}.")
    if not np.isfinite(series.to_numpy()).all():
        raise ValueError("Scores contain NaN / inf.")
    if adata.var_names.has_duplicates:
        raise ValueError("adata.var_names are not unique; call adata.var_names_make_unique() first.")
    missing = series.index.difference(adata.var_names)
    if len(missing):
        raise KeyError(f"{len(missing)} scored genes are not in adata.var_names, e.g. {missing[:5].tolist()}.")
    if key_added in adata.var.columns and not overwrite:
        raise KeyError(f"adata.var[{key_added!r}] exists; pass overwrite=True to replace it.")
    adata.var[key_added] = series.reindex(adata.var_names).to_numpy()


def _named(scores: Any, genes: Sequence[str] | None) -> pd.Series:
    if isinstance(scores, pd.Series):
        s = scores.astype(np.float64)
    else:
        vals = np.asarray(scores, dtype=np.float64).ravel()
        if genes is not None and len(genes) != len(vals):
            raise ValueError(f"genes has {len(genes)} names for {len(vals)} scores.")
        s = pd.Series(vals, index=pd.Index([str(g) for g in genes]) if genes is not None else None)
    if s.index.has_duplicates:
        raise ValueError("Scores name some genes twice.")
    if not np.isfinite(s.to_numpy()).all():
        raise ValueError("Scores contain NaN / inf.")
    return s


def _top(s: pd.Series, k: int) -> set:
    order = np.argsort(-s.to_numpy(), kind="stable")  # ties: earlier gene first
    return set(s.index[order[:k]])


def top_overlap(scores_a: Any, scores_b: Any, *, k: int = 50, genes: Sequence[str] | None = None) -> dict[str, Any]:
    """Overlap of two top-k gene lists and its hypergeometric significance.

    Parameters
    ----------
    scores_a, scores_b
        Importance scores (higher = more important): Series indexed by gene name (then only
        the genes both score are compared, as for models with different panels), or arrays
        over the same genes in the same order (named by ``genes``, or by position).
    k
        Length of each top list, ``1 <= k <= G`` (G = number of genes compared). Ties are
        broken by gene order.
    genes
        Names of array scores.

    Returns
    -------
    dict
        ``overlap`` (int), ``expected`` (``k^2 / G``, the mean under random lists),
        ``p_value`` (``P(X >= overlap)``, X hypergeometric: G genes, k marked, k drawn; the
        one-sided Fisher exact test the paper uses), ``k`` and ``n_genes`` (G).

    Examples
    --------
    >>> a = model_a.gene_importance(sdata)                  # pandas Series indexed by gene
    >>> b = model_b.gene_importance(sdata)
    >>> bd.tl.top_overlap(a, b, k=50)                       # overlap, expected, p_value, k, n_genes
    """
    a, b = _named(scores_a, genes), _named(scores_b, genes)
    if isinstance(scores_a, pd.Series) and isinstance(scores_b, pd.Series):
        shared = a.index.intersection(b.index, sort=False)
        a, b = a.loc[shared], b.loc[shared]
    elif isinstance(scores_a, pd.Series) or isinstance(scores_b, pd.Series):
        raise TypeError("Pass both scores as Series (matched by name) or both as arrays.")
    elif len(a) != len(b):
        raise ValueError(f"Array scores must cover the same genes: lengths {len(a)} and {len(b)}.")
    g = len(a)
    k = check_count(k, "k")
    if k > g:
        raise ValueError(f"k = {k} exceeds the {g} genes compared.")
    overlap = len(_top(a, k) & _top(b, k))
    return {
        "overlap": overlap,
        "expected": k * k / g,
        "p_value": float(hypergeom.sf(overlap - 1, g, k, k)),
        "k": k,
        "n_genes": g,
    }


def importance_stability(
    scores: Sequence[Any] | Mapping[str, Any], k: int | Sequence[int] = 50, *, genes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Pairwise top-k overlaps between several importance rankings (models, splits, samples).

    Parameters
    ----------
    scores
        A list of scores (named ``0, 1, ...``) or a mapping name -> scores; each as in
        :func:`top_overlap`.
    k
        One top-list length or several (one row per pair and k, as the paper's 50 / 100 / 200).
    genes
        Names of array scores.

    Returns
    -------
    pandas.DataFrame
        Columns ``a``, ``b``, ``k``, ``n_genes``, ``overlap``, ``expected``, ``p_value``; one row
        per unordered pair and k.

    Examples
    --------
    >>> runs = {"seed0": model0.gene_importance(sdata), "seed1": model1.gene_importance(sdata)}
    >>> bd.tl.importance_stability(runs, k=[50, 100, 200])       # one row per pair and k
    """
    items = list(scores.items()) if isinstance(scores, Mapping) else list(enumerate(scores))
    if len(items) < 2:
        raise ValueError("Need at least two score vectors to compare.")
    ks = [k] if np.isscalar(k) else list(k)
    rows = []
    for kk in ks:
        for (na, sa), (nb, sb) in itertools.combinations(items, 2):
            r = top_overlap(sa, sb, k=kk, genes=genes)
            rows.append({"a": na, "b": nb, **{c: r[c] for c in ("k", "n_genes", "overlap", "expected", "p_value")}})
    return pd.DataFrame(rows)
