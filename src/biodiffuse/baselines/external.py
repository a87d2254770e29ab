"""Published tools that predict unmeasured spatial genes from an scRNA-seq reference.

These are the external baselines for :class:`~biodiffuse.models.SpaDiT`. Every wrapper has
the same signature::

    fit_predict_<name>(sp, sc, test_genes, *, seed=0, **kwargs) -> pandas.DataFrame

``sp``
    Spatial cells x the *known* genes only, raw counts in ``X``. The held-out genes must not
    be in it (a test gene found in ``sp`` raises a ``ValueError``).
``sc``
    Reference cells x genes, raw counts in ``X``; must hold every gene of ``sp`` and every
    test gene (matched by name, in any order; other genes are ignored).
``test_genes``
    The genes to predict.

The result has index ``sp.obs_names`` and columns ``test_genes`` and is on the scale
``log1p(count / library_size * 1e4)``, where the library size of a spatial cell is its sum
over the genes of ``sp`` and that of a reference cell its sum over the same (known) genes,
so that truth and predictions share one scale (:func:`biodiffuse.data.log_normalize`).

Tangram
    ``tangram-sc``: maps reference cells onto spatial cells (``mode="cells"``) using the
    known genes, then projects the log-normalised reference with ``tg.project_genes``.
gimVI
    ``scvi.external.GIMVI``: a joint VAE of the reference counts (all genes) and the spatial
    counts (known genes); the test genes are decoded for the spatial cells.
stDiff
    Not usable here (see :func:`fit_predict_stdiff`): the function raises ``ImportError``.

The packages are optional: ``pip install 'biodiffuse[spatial-baselines]'``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from ..data import check_adata, check_values, columns_by_name, log_normalize

__all__ = ["EXTERNAL_SPATIAL_BASELINES", "fit_predict_gimvi", "fit_predict_stdiff", "fit_predict_tangram"]

_TARGET_SUM = 1e4

STDIFF_UNAVAILABLE = (
    "stDiff cannot be used in this environment. Its PyPI package (stdiff-sc 1.1.4, the only "
    "distribution; `pip install stdiff-sc`) pins numpy==1.19.5, pandas==1.1.5, scipy==1.5.4, "
    "scikit-learn==0.24.2, scanpy==1.7.2, anndata==0.7.8, torch==1.9.0 and ray==2.4.0, which do not "
    "install on Python >= 3.11 (pip fails building pandas 1.1.5 from source) and conflict with the "
    "torch / numpy this package needs. Installed with --no-deps it would still not run on CPU as "
    "published: its data loader builds torch.Generator(device='cuda'), its driver script "
    "(test-stDiff.py, not in the wheel) sets CUDA default tensors, importing it needs ray and "
    "timm, and it installs top-level packages named 'model' and 'process'. It is deliberately not "
    "re-implemented here."
)


@dataclass
class _Inputs:
    """Validated, name-matched inputs shared by the wrappers."""

    known: list[str]
    test: list[str]
    sp_counts: np.ndarray  # spatial cells x known genes, float64
    sc_counts: np.ndarray  # reference cells x (known + test) genes, float64
    sp_library: np.ndarray  # per spatial cell, sum over the known genes
    sc_library: np.ndarray  # per reference cell, sum over the known genes


def _check_gene_list(test_genes: Sequence[str]) -> list[str]:
    if isinstance(test_genes, str) or not isinstance(test_genes, (Sequence, pd.Index, np.ndarray)):
        raise TypeError(f"test_genes must be a list of gene names, got {type(test_genes).__name__}.")
    out = [str(g) for g in test_genes]
    if not out:
        raise ValueError("test_genes is empty; give at least one gene to predict.")
    dup = sorted({g for g in out if out.count(g) > 1})
    if dup:
        raise ValueError(f"test_genes repeats gene(s) {dup}.")
    return out


def _dense(x: np.ndarray | sparse.spmatrix) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)


def _prepare(sp: AnnData, sc: AnnData, test_genes: Sequence[str]) -> _Inputs:
    """Check the inputs (leaks, missing genes, counts) and extract the count blocks."""
    check_adata(sp, "sp")
    check_adata(sc, "sc")
    test = _check_gene_list(test_genes)
    known = [str(g) for g in sp.var_names]
    if not known:
        raise ValueError("sp has no genes; it must hold the known (measured) genes.")
    leaked = [g for g in test if g in set(known)]
    if leaked:
        raise ValueError(
            f"test gene(s) {leaked} are in sp.var_names: held-out genes must be removed from the "
            "spatial data before calling the wrapper (the method must never see them)."
        )
    sc_names = set(map(str, sc.var_names))
    for what, genes in (("test gene", test), ("known (sp) gene", known)):
        missing = [g for g in genes if g not in sc_names]
        if missing:
            raise ValueError(f"{len(missing)} {what}(s) are absent from sc.var_names (e.g. {missing[:5]}).")
    if sp.X is None or sc.X is None:
        raise ValueError("sp.X and sc.X must hold raw counts.")
    sp_counts = _dense(columns_by_name(sp.X, list(map(str, sp.var_names)), known, "sp gene"))
    sc_counts = _dense(columns_by_name(sc.X, list(map(str, sc.var_names)), known + test, "sc gene"))
    check_values(sp_counts, "sp.X", nonnegative=True)
    check_values(sc_counts, "sc.X (known and test genes)", nonnegative=True)
    return _Inputs(
        known=known,
        test=test,
        sp_counts=sp_counts,
        sc_counts=sc_counts,
        sp_library=sp_counts.sum(axis=1),
        sc_library=sc_counts[:, : len(known)].sum(axis=1),
    )


def _import(module: str, pip_name: str, method: str):
    try:
        return __import__(module)
    except ImportError as err:
        raise ImportError(
            f"{method} needs the optional package {pip_name!r}: pip install {pip_name} "
            "(or pip install 'biodiffuse[spatial-baselines]')."
        ) from err


@contextlib.contextmanager
def _seeded(seed: int, device: str) -> Iterator[None]:
    """Seed numpy's and torch's global generators, restoring both afterwards."""
    import torch

    dev = torch.device(device)
    cuda = [dev.index or 0] if dev.type == "cuda" else []
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=cuda):
            np.random.seed(seed)
            torch.manual_seed(seed)
            yield
    finally:
        np.random.set_state(state)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """Tangram logs every step at INFO on the root logger; keep that out of the user's log."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _frame(values: np.ndarray, sp: AnnData, test: list[str]) -> pd.DataFrame:
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise RuntimeError(f"the method returned {int((~np.isfinite(values)).sum())} non-finite prediction(s).")
    return pd.DataFrame(values, index=sp.obs_names.copy(), columns=pd.Index(test, dtype=object))


def fit_predict_tangram(
    sp: AnnData,
    sc: AnnData,
    test_genes: Sequence[str],
    *,
    seed: int = 0,
    num_epochs: int = 500,
    device: str = "cpu",
    learning_rate: float = 0.1,
    density_prior: str | None = "rna_count_based",
) -> pd.DataFrame:
    """Predict held-out spatial genes with Tangram (cell-level mapping, then projection).

    Both objects are log-normalised (``log1p(count / library * 1e4)``, library = the sum over
    the known genes), as in stDiff's Tangram baseline script. ``tg.pp_adatas`` selects the known
    genes expressed in both objects as training genes, ``tg.map_cells_to_space`` learns the
    cells x spatial-cells probability matrix ``M`` in ``mode="cells"`` (each reference cell is a
    softmax over spatial cells) with the RNA-count density prior computed from the raw spatial
    counts, and ``tg.project_genes`` returns ``M.T @ S`` for the log-normalised reference ``S``.
    Each spatial cell's projection is then divided by its total mapped weight ``M.sum(0)``, so
    that the prediction is a weighted mean of reference cells on the log-normalised scale
    instead of a sum that grows with the number of cells mapped there. A test gene with no
    count in ``sc`` is predicted as 0.

    Parameters
    ----------
    sp
        Spatial cells x known genes, raw counts in ``X``.
    sc
        Reference cells x genes, raw counts in ``X``; holds every gene of ``sp`` and ``test_genes``.
    test_genes
        Genes to predict; none may be in ``sp``.
    seed
        Seeds numpy and torch for the random initialisation of ``M`` (global states are
        restored afterwards).
    num_epochs
        Optimisation steps (full-batch Adam). 500 as in Tangram's tutorials for cell-level
        mapping; the Li et al. (2022) benchmark and stDiff's baseline script ran Tangram's
        default of 1000. Each step costs about 0.9 CPU-seconds (one thread) for 5,613 x 3,405
        cells.
    device
        Torch device for the optimisation (``"cpu"``, ``"cuda:0"``...).
    learning_rate
        Adam learning rate (Tangram's default).
    density_prior
        ``"rna_count_based"`` (Tangram's default; computed here from the raw spatial counts over
        the known genes), ``"uniform"`` or ``None``.

    Returns
    -------
    pandas.DataFrame
        Predictions, index ``sp.obs_names``, columns ``test_genes``.

    Examples
    --------
    >>> adata_sp, adata_sc = bd.datasets.osmfish_allen_visp()
    >>> panel = adata_sp[:, ~adata_sp.var_names.isin(["Gad2", "Vip"])].copy()
    >>> pred = bd.baselines.fit_predict_tangram(panel, adata_sc, ["Gad2", "Vip"], num_epochs=500, device="cuda:0")
    """
    tg = _import("tangram", "tangram-sc", "fit_predict_tangram")
    inp = _prepare(sp, sc, test_genes)
    if num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1, got {num_epochs}.")
    if density_prior not in ("rna_count_based", "uniform", None):
        raise ValueError(f"density_prior must be 'rna_count_based', 'uniform' or None, got {density_prior!r}.")
    genes = inp.known + inp.test
    sc_log = log_normalize(inp.sc_counts, inp.sc_library, _TARGET_SUM)
    # Tangram indexes adata_sc.X with .toarray(), so the reference must be sparse.
    ad_sc = AnnData(X=sparse.csr_matrix(sc_log), var=pd.DataFrame({"gene": genes}, index=genes))
    ad_sc.obs_names = [f"c{i}" for i in range(ad_sc.n_obs)]
    ad_sp = AnnData(
        X=log_normalize(inp.sp_counts, inp.sp_library, _TARGET_SUM),
        var=pd.DataFrame(index=inp.known),
    )
    ad_sp.obs_names = [f"s{i}" for i in range(ad_sp.n_obs)]
    with _quiet_root_logger():
        tg.pp_adatas(ad_sc, ad_sp, genes=inp.known, gene_to_lowercase=False)
    train_genes = sorted(ad_sc.uns["training_genes"])
    if not train_genes:
        raise ValueError("No known gene has counts in both sp and sc; Tangram has nothing to map with.")
    if density_prior == "rna_count_based":
        # pp_adatas computed it from X (log values here); Tangram defines it on counts.
        total = inp.sp_library.sum()
        if total <= 0:
            raise ValueError("sp has no counts over its genes; the RNA-count density prior is undefined.")
        ad_sp.obs["rna_count_based_density"] = inp.sp_library / total
    with _seeded(seed, device), _quiet_root_logger():
        ad_map = tg.map_cells_to_space(
            ad_sc,
            ad_sp,
            cv_train_genes=train_genes,
            mode="cells",
            device=device,
            learning_rate=learning_rate,
            num_epochs=int(num_epochs),
            density_prior=density_prior,
            random_state=seed,
            verbose=False,
        )
    ad_ge = tg.project_genes(ad_map, ad_sc)  # lower-cases var names; the "gene" column keeps ours
    weight = np.asarray(ad_map.X.sum(axis=0), dtype=np.float64).ravel()
    projected = np.asarray(ad_ge.X, dtype=np.float64) / np.where(weight > 0, weight, 1.0)[:, None]
    by_gene = pd.DataFrame(projected, columns=ad_ge.var["gene"].astype(str).to_numpy())
    pred = by_gene.reindex(columns=inp.test, fill_value=0.0).to_numpy()
    return _frame(pred, sp, inp.test)


def _scale_to_lognorm(scale: np.ndarray, n_known: int) -> np.ndarray:
    """Expression frequencies (known genes first, then test genes) -> log-normalised test genes.

    The test-gene frequencies are divided by each cell's summed frequency over the known
    genes, i.e. expressed relative to the same library as the truth.
    """
    scale = np.asarray(scale, dtype=np.float64)
    known_sum = scale[:, :n_known].sum(axis=1, keepdims=True)
    return np.log1p(scale[:, n_known:] / np.where(known_sum > 0, known_sum, 1.0) * _TARGET_SUM)


def fit_predict_gimvi(
    sp: AnnData,
    sc: AnnData,
    test_genes: Sequence[str],
    *,
    seed: int = 0,
    max_epochs: int = 200,
    n_latent: int = 10,
    accelerator: str = "cpu",
    batch_size: int = 128,
) -> pd.DataFrame:
    """Predict held-out spatial genes with gimVI (scvi-tools' ``scvi.external.GIMVI``).

    gimVI is trained on raw counts with its defaults (ZINB for the reference over the known and
    test genes, NB for the spatial cells over the known genes, which are shared by name, and an
    adversarial loss mixing the two latent spaces), as in the Li et al. (2022) benchmark.
    ``get_imputed_values(normalized=True)`` returns, for each spatial cell, the decoder's
    expression frequencies of all reference genes (posterior mean of the latent, spatial
    decoder); the test genes' frequencies are divided by the cell's summed frequency over the
    known genes, multiplied by 1e4 and ``log1p``-transformed, i.e. put on the scale of the
    truth. Reference cells without any count over the genes used are dropped before fitting.

    Parameters
    ----------
    sp
        Spatial cells x known genes, raw counts in ``X``.
    sc
        Reference cells x genes, raw counts in ``X``; holds every gene of ``sp`` and ``test_genes``.
    test_genes
        Genes to predict; none may be in ``sp``.
    seed
        Set as ``scvi.settings.seed`` (which seeds Python, numpy and torch globally).
    max_epochs
        Training epochs (200 as in the benchmark and in scvi-tools' default).
    n_latent
        Latent dimension (gimVI's default).
    accelerator
        Lightning accelerator (``"cpu"``, ``"gpu"``, ``"auto"``).
    batch_size
        Minibatch size for training and prediction.

    Returns
    -------
    pandas.DataFrame
        Predictions, index ``sp.obs_names``, columns ``test_genes``.

    Examples
    --------
    >>> adata_sp, adata_sc = bd.datasets.osmfish_allen_visp()
    >>> panel = adata_sp[:, ~adata_sp.var_names.isin(["Gad2", "Vip"])].copy()
    >>> pred = bd.baselines.fit_predict_gimvi(panel, adata_sc, ["Gad2", "Vip"], max_epochs=200, accelerator="gpu")
    """
    _import("scvi", "scvi-tools", "fit_predict_gimvi")
    from scvi import settings
    from scvi.external import GIMVI

    inp = _prepare(sp, sc, test_genes)
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")
    genes = inp.known + inp.test
    keep = inp.sc_counts.sum(axis=1) > 0
    if not keep.any():
        raise ValueError("sc has no counts over the known and test genes.")
    ad_seq = AnnData(X=sparse.csr_matrix(inp.sc_counts[keep].astype(np.float32)), var=pd.DataFrame(index=genes))
    ad_seq.obs_names = [f"c{i}" for i in range(ad_seq.n_obs)]
    ad_sp = AnnData(X=sparse.csr_matrix(inp.sp_counts.astype(np.float32)), var=pd.DataFrame(index=inp.known))
    ad_sp.obs_names = [f"s{i}" for i in range(ad_sp.n_obs)]
    settings.seed = seed
    GIMVI.setup_anndata(ad_seq)
    GIMVI.setup_anndata(ad_sp)
    model = GIMVI(ad_seq, ad_sp, n_latent=n_latent)
    model.train(
        max_epochs=int(max_epochs),
        accelerator=accelerator,
        devices=1,
        batch_size=batch_size,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
        enable_checkpointing=False,
    )
    _, sp_scale = model.get_imputed_values(normalized=True, batch_size=batch_size)
    return _frame(_scale_to_lognorm(sp_scale, len(inp.known)), sp, inp.test)


def fit_predict_stdiff(sp: AnnData, sc: AnnData, test_genes: Sequence[str], *, seed: int = 0, **kwargs) -> pd.DataFrame:
    """stDiff (Li et al. 2024) -- unavailable: always raises ``ImportError`` with the reason.

    Parameters
    ----------
    sp, sc, test_genes, seed, **kwargs
        As for the other wrappers (unused).

    Raises
    ------
    ImportError
        Always; the message says why the published package cannot be installed or run here.

    Examples
    --------
    >>> try:
    ...     bd.baselines.fit_predict_stdiff(panel, adata_sc, ["Gad2", "Vip"])
    ... except ImportError as err:
    ...     print(err)                             # why stDiff cannot run here
    """
    raise ImportError(STDIFF_UNAVAILABLE)


EXTERNAL_SPATIAL_BASELINES: dict[str, Callable[..., pd.DataFrame]] = {
    "Tangram": fit_predict_tangram,
    "gimVI": fit_predict_gimvi,
    "stDiff": fit_predict_stdiff,
}
