"""totalVI (scvi-tools) as a gene -> protein imputation baseline.

Needs the optional dependency: ``pip install 'biodiffuse[totalvi]'`` (scvi-tools). It is
imported only when :func:`totalvi_impute` is called.

Protocol (the one of the scvi-tools tutorials on imputing proteins for an RNA-only query):
train and test cells are concatenated into one object with a ``batch`` column ("train" /
"test"); the test cells' protein counts are replaced by zeros, so every protein is all-zero
in the test batch, which scvi-tools' protein field records as "not measured in that batch"
(``protein_batch_mask``). The protein likelihood and the protein-background KL are masked
out for those cells, so the model never sees a test protein value; the test cells only
contribute their RNA (the model is transductive on RNA, as in the tutorials). Proteins are
then read from the decoder for the test cells with ``transform_batch="train"``, i.e. as if
they had been measured in the training batch.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

__all__ = ["totalvi_impute"]

_TRAIN, _TEST = "train", "test"
_PROTEIN_KEY = "protein_expression"


def _import_scvi():
    try:
        import scvi  # noqa: F401
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "totalvi_impute needs scvi-tools, which is an optional dependency: "
            "pip install 'biodiffuse[totalvi]'"
        ) from err
    return scvi


def _rna_counts(adata: AnnData, what: str) -> sparse.csr_matrix:
    if not isinstance(adata, AnnData):
        raise TypeError(f"{what} must be an AnnData, got {type(adata).__name__}.")
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ValueError(f"{what} is empty (shape {adata.shape}).")
    x = adata.X
    if x is None:
        raise ValueError(f"{what}.X is empty; totalVI needs RNA counts in X.")
    x = sparse.csr_matrix(x, dtype=np.float32)
    if x.data.size and (not np.isfinite(x.data).all() or (x.data < 0).any()):
        raise ValueError(f"{what}.X must hold finite, non-negative RNA counts.")
    return x


def _protein_counts(adata: AnnData, key: str) -> tuple[np.ndarray, list[str]]:
    if key not in adata.obsm:
        raise KeyError(f"{key!r} not in adata_train.obsm (have {list(adata.obsm.keys())}).")
    value = adata.obsm[key]
    if isinstance(value, pd.DataFrame):
        names = [str(c) for c in value.columns]
        arr = value.to_numpy(dtype=np.float32)
    else:
        arr = value.toarray() if sparse.issparse(value) else np.asarray(value)
        arr = arr.astype(np.float32)
        names = [f"protein_{i}" for i in range(arr.shape[1])] if arr.ndim == 2 else []
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise ValueError(f"adata_train.obsm[{key!r}] must be a non-empty 2-D table, got shape {arr.shape}.")
    if not np.isfinite(arr).all() or (arr < 0).any():
        raise ValueError(f"adata_train.obsm[{key!r}] must hold finite, non-negative protein counts.")
    return arr, names


def _select_genes(x_train: sparse.csr_matrix, n_top_genes: int | None) -> np.ndarray:
    """Column indices (sorted) of the genes fed to totalVI: the same highly variable genes of the
    training cells as the regression baselines use (scanpy "seurat" on log-normalised counts)."""
    if n_top_genes is None or n_top_genes >= x_train.shape[1]:
        return np.arange(x_train.shape[1])
    if n_top_genes < 1:
        raise ValueError(f"n_top_genes must be >= 1 or None, got {n_top_genes}.")
    from .tables import _log_normalize, _select_hvg

    return np.sort(_select_hvg(_log_normalize(x_train), n_top_genes))


def totalvi_impute(
    adata_train: AnnData,
    adata_test: AnnData,
    protein_obsm_key: str = "protein_expression",
    n_top_genes: int | None = 2000,
    max_epochs: int = 200,
    seed: int = 0,
    *,
    n_samples: int = 25,
    include_protein_background: bool = False,
    accelerator: str = "auto",
) -> tuple[np.ndarray, float, float]:
    """Train totalVI on the training cells and predict the test cells' proteins from RNA only.

    Train and test cells are fitted together in one totalVI model in which the test cells form
    a second batch whose proteins are all zero; scvi-tools treats a protein that is all zero in
    a batch as not measured there and masks it out of the likelihood, so the test cells'
    proteins are never seen (whatever ``adata_test.obsm`` holds, it is not read). Proteins are
    then predicted for the test cells as if they had been measured in the training batch.

    Parameters
    ----------
    adata_train
        Training cells: raw RNA counts in ``X`` (dense or sparse) and raw protein (ADT) counts in
        ``obsm[protein_obsm_key]`` (DataFrame or array, cells x proteins).
    adata_test
        Test cells: raw RNA counts in ``X``, with the same genes as ``adata_train`` (matched by
        ``var_names``; the order may differ). Its proteins, if any, are ignored.
    protein_obsm_key
        Key of the protein counts in ``adata_train.obsm``.
    n_top_genes
        Number of highly variable genes fed to totalVI, chosen on the training cells only as for
        the regression baselines (scanpy ``"seurat"`` flavour on library-size-normalised log1p
        counts); ``None`` or a number >= the number of genes keeps all genes.
    max_epochs
        Maximum number of training epochs (totalVI early-stops on a validation split of the
        cells, 10 % by default).
    seed
        Random seed (sets ``scvi.settings.seed``, which seeds numpy and torch globally).
    n_samples
        Posterior samples of the latent variable averaged per test cell.
    include_protein_background
        ``False`` (scvi-tools' default, and what its imputation tutorials use): the denoised
        foreground expression ``(1 - pi) * rate_fore``. ``True``: add the background component
        ``pi * rate_back``, i.e. the mean of the protein likelihood.
    accelerator
        Lightning accelerator for training and prediction (``"cpu"``, ``"gpu"``, ``"auto"``).

    Returns
    -------
    tuple
        ``(pred, fit_seconds, predict_seconds)``: ``pred`` is a float array
        ``(adata_test.n_obs, n_proteins)`` of expected protein counts in the original count
        scale of the training batch (totalVI's protein rates times its per-protein efficiency
        of the training batch; totalVI models no per-cell protein library size), columns in
        the order of ``adata_train.obsm[protein_obsm_key]``; ``fit_seconds`` covers the data
        set-up, model construction and training, ``predict_seconds`` the prediction.

    Raises
    ------
    ImportError
        If scvi-tools is not installed.

    Examples
    --------
    >>> pred, fit_s, predict_s = bd.baselines.totalvi_impute(train, test, max_epochs=200, accelerator="gpu")
    >>> proteins = train.obsm["protein_expression"].columns
    >>> pred = pd.DataFrame(pred, index=test.obs_names, columns=proteins)   # expected protein counts
    """
    scvi = _import_scvi()
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}.")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be >= 1, got {max_epochs}.")

    x_train = _rna_counts(adata_train, "adata_train")
    x_test = _rna_counts(adata_test, "adata_test")
    y_train, protein_names = _protein_counts(adata_train, protein_obsm_key)
    if y_train.shape[0] != adata_train.n_obs:
        raise ValueError("adata_train.obsm protein table and adata_train.X have different numbers of cells.")
    if not np.array_equal(np.asarray(adata_test.var_names), np.asarray(adata_train.var_names)):
        missing = adata_train.var_names.difference(adata_test.var_names)
        if len(missing):
            raise ValueError(f"adata_test lacks {len(missing)} genes of adata_train (e.g. {list(missing[:5])}).")
        x_test = x_test[:, adata_test.var_names.get_indexer(adata_train.var_names)]

    t0 = time.perf_counter()
    genes = _select_genes(x_train, n_top_genes)
    n_train, n_test = x_train.shape[0], x_test.shape[0]
    x_all = sparse.vstack([x_train[:, genes], x_test[:, genes]], format="csr", dtype=np.float32)
    obs = pd.DataFrame(
        {"batch": pd.Categorical([_TRAIN] * n_train + [_TEST] * n_test, categories=[_TRAIN, _TEST])},
        index=pd.Index([f"train_{i}" for i in range(n_train)] + [f"test_{i}" for i in range(n_test)]),
    )
    joint = AnnData(x_all, obs=obs, var=pd.DataFrame(index=pd.Index(adata_train.var_names[genes].astype(str))))
    # Test proteins are zeros: all-zero in the "test" batch = not measured there.
    joint.obsm[_PROTEIN_KEY] = pd.DataFrame(
        np.vstack([y_train, np.zeros((n_test, y_train.shape[1]), dtype=np.float32)]),
        index=joint.obs_names,
        columns=pd.Index(protein_names, dtype=str),
    )

    scvi.settings.seed = int(seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*setup_mudata.*")
        warnings.filterwarnings("ignore", message=".*all 0 counts in some batches.*")
        scvi.model.TOTALVI.setup_anndata(joint, protein_expression_obsm_key=_PROTEIN_KEY, batch_key="batch")
        model = scvi.model.TOTALVI(joint)
    codes = list(model.adata_manager.get_state_registry("batch")["categorical_mapping"])
    train_code, test_code = codes.index(_TRAIN), codes.index(_TEST)
    mask = model.protein_state_registry.get("protein_batch_mask")
    if mask is None or np.asarray(mask[str(test_code)]).any():
        raise RuntimeError("totalVI did not register the test batch's proteins as missing; refusing to go on.")
    model.train(
        max_epochs=int(max_epochs),
        accelerator=accelerator,
        devices="auto" if accelerator == "auto" else 1,
        enable_progress_bar=False,
    )
    fit_seconds = time.perf_counter() - t0

    t0 = time.perf_counter()
    _, pro = model.get_normalized_expression(
        joint,
        indices=np.arange(n_train, n_train + n_test),
        transform_batch=_TRAIN,
        n_samples=int(n_samples),
        return_mean=True,
        include_protein_background=bool(include_protein_background),
        return_numpy=True,
    )
    pred = np.asarray(pro, dtype=np.float64)
    # scvi-tools >= 1.3 scales the protein likelihood's means by a learned per-protein, per-batch
    # efficiency that get_normalized_expression leaves out: put it back for the count scale.
    eff = getattr(model.module, "log_per_batch_efficiency", None)
    if eff is not None:
        pred = pred * np.exp(eff.detach().cpu().numpy()[:, train_code].astype(np.float64))[None, :]
    predict_seconds = time.perf_counter() - t0
    return pred, fit_seconds, predict_seconds
