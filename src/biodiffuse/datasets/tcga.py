"""Real TCGA multi-omics cohorts as MuData (one modality per omics layer), checked by sha256.

Read from the project's shared data folder: ``tcga/`` under the folder in the
``BIODIFFUSE_DATA_DIR`` environment variable (or that folder itself), else
``../shared/data/tcga/`` relative to the working directory and to the repository root.
Files are ``.h5mu`` (HDF5) read with :func:`mudata.read_h5mu`, which never executes code
from the file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ._fetch import fetch_file
from ._locate import locate_file

if TYPE_CHECKING:
    from mudata import MuData

__all__ = ["R_NA_INTEGER", "tcga_acc", "tcga_brca"]

# R's NA_integer_ as it survives conversion to int32: the smallest 32-bit integer.
R_NA_INTEGER = -2147483648
# R's NA for character columns became the string "None" in the conversion.
_R_NA_STRING = "None"

_ACC = ("tcga_acc_mini.h5mu", "9e4fc43348cde306102b1913d58295a7c6098b1e8e1f53a287dfd7a26d62221c")
_BRCA = {
    "train": ("tcga_brca_mixomics_train.h5mu", "05cb4e8b816ef8f1828d580bb1290d2470346f737f9c1de92f7dfc735ccef461"),
    "test": ("tcga_brca_mixomics_test.h5mu", "4a9ce52c289406cc03a273505c8d6b3d232600fdbe16ff05afc5f03fb822edea"),
}

_ACC_SOURCE = (
    "TCGA adrenocortical carcinoma (ACC) subset 'miniACC' from waldronlab/MultiAssayExperiment "
    "@131e0bf : data/miniACC.RData (Artistic-2.0), converted to h5mu without changing assay values. "
    "Clinical obs cleaned by biodiffuse.datasets.tcga_acc: R NA (-2147483648 in integer columns, "
    "'None' in text columns) -> missing; survival_time / survival_event added."
)
_BRCA_SOURCE = (
    "TCGA breast cancer multi-omics ({split}: data.{split}) from mixOmicsTeam/mixOmics @d732983 : "
    "data/breast.TCGA.rda (GPL>=2), converted to h5mu without changing values "
    "(normalised values as shipped there, subsets of features)."
)


def _read_h5mu(path: Path) -> MuData:
    """Read a sha256-checked ``.h5mu`` (HDF5, no code executed), without mudata's update chatter."""
    import mudata

    with warnings.catch_warnings():
        # mudata 0.3 announces its future pull_on_update default on every read, and the ACC
        # modalities share gene names (RNA, copy number, mutations), so the global var_names
        # repeat; names are unique within each modality, which is what callers index by.
        warnings.filterwarnings("ignore", message=r".*pull_on_update.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r".*var_names.*", category=UserWarning)
        return mudata.read_h5mu(path)


def _clean_clinical(obs: pd.DataFrame) -> pd.DataFrame:
    """R missing values -> NaN / missing: integer sentinels and the string ``"None"``."""
    out = obs.copy()
    for col in out.columns:
        s = out[col]
        if pd.api.types.is_integer_dtype(s.dtype):
            if (s == R_NA_INTEGER).any():
                out[col] = s.astype(np.float64).where(s != R_NA_INTEGER, np.nan)
        elif isinstance(s.dtype, pd.CategoricalDtype):
            if _R_NA_STRING in s.cat.categories:
                out[col] = s.cat.remove_categories([_R_NA_STRING])
        elif s.dtype == object:
            out[col] = s.where(s.astype(str) != _R_NA_STRING, None)
    return out


def _add_survival(obs: pd.DataFrame) -> pd.DataFrame:
    """``survival_time`` (days to death if dead, else to last follow-up) and ``survival_event``."""
    status = obs["vital_status"]
    if status.isna().any() or not set(pd.unique(status)) <= {0, 1}:
        raise ValueError("obs['vital_status'] must hold 0 (alive) / 1 (dead) for every patient.")
    event = status.to_numpy() == 1
    death = obs["days_to_death"].to_numpy(dtype=np.float64)
    follow = obs["days_to_last_followup"].to_numpy(dtype=np.float64)
    obs["survival_time"] = np.where(event, death, follow)
    obs["survival_event"] = event
    return obs


def tcga_acc(path: str | os.PathLike | None = None) -> MuData:
    """TCGA adrenocortical carcinoma, 92 patients, five omics modalities (partially overlapping).

    The ``miniACC`` MultiAssayExperiment of waldronlab/MultiAssayExperiment @131e0bf
    (``data/miniACC.RData``, Artistic-2.0), converted to h5mu without changing assay values.

    Parameters
    ----------
    path
        The file or the folder holding ``tcga_acc_mini.h5mu``. Default: ``tcga/`` under the
        folder in the ``BIODIFFUSE_DATA_DIR`` environment variable (or that folder itself),
        else ``../shared/data/tcga/`` relative to the working directory and to the repository
        root.

    Returns
    -------
    mudata.MuData
        92 patients (``obs_names`` are TCGA barcodes). Modalities (patients x features, values
        as published): ``RNASeq2GeneNorm`` 79 x 198 (normalised RNA-seq counts),
        ``gistict`` 90 x 198 (GISTIC copy-number calls -2..2), ``RPPAArray`` 46 x 33 (protein,
        continuous, can be negative), ``Mutations`` 90 x 97 (binary), ``miRNASeqGene``
        80 x 471 (counts); 43 patients have all five. Clinical ``obs`` (vital_status,
        days_to_death, days_to_last_followup, pathologic_stage, C1A.C1B, mRNA_K4, COC, ...)
        cleaned: R's missing values (-2147483648 in integer columns, which become float
        columns with NaN; the text ``"None"`` in categorical columns, which becomes a missing
        category) are missing. Added: ``obs["survival_time"]`` (float days: days_to_death
        for dead patients, days_to_last_followup otherwise) and ``obs["survival_event"]``
        (bool, True = death observed, from vital_status). ``uns["source"]``: provenance.
        A new object on every call.

    Raises
    ------
    FileNotFoundError
        If the file is not found (the message lists where it looked).
    ValueError
        If its sha256 does not match.

    Examples
    --------
    >>> mdata = bd.datasets.tcga_acc()
    >>> {name: mod.shape for name, mod in mdata.mod.items()}
    >>> mdata.obs[["survival_time", "survival_event"]].head()
    """
    name, sha = _ACC
    mdata = _read_h5mu(fetch_file(locate_file("tcga", name, path), sha))
    mdata.obs = _add_survival(_clean_clinical(mdata.obs))
    mdata.uns["source"] = _ACC_SOURCE
    return mdata


def tcga_brca(split: str = "train", path: str | os.PathLike | None = None) -> MuData:
    """TCGA breast cancer, mRNA / miRNA / protein of the mixOmics ``breast.TCGA`` data.

    mixOmicsTeam/mixOmics @d732983 (``data/breast.TCGA.rda``, GPL>=2), converted to h5mu
    without changing values: normalised expression as shipped there, on subsets of features.

    Parameters
    ----------
    split
        ``"train"`` (mixOmics ``data.train``: 150 patients with ``mrna`` 200, ``mirna`` 184
        and ``protein`` 142 features) or ``"test"`` (``data.test``: 70 other patients with
        ``mrna`` and ``mirna`` only; no protein was measured).
    path
        The file or the folder holding ``tcga_brca_mixomics_<split>.h5mu``; default search as
        in :func:`tcga_acc`.

    Returns
    -------
    mudata.MuData
        Patients x features per modality (every patient has every modality of its split);
        ``obs["subtype"]``: PAM50 subtype (Basal, Her2, LumA); ``uns["source"]``: provenance.
        A new object on every call.

    Raises
    ------
    ValueError
        If ``split`` is not ``"train"`` or ``"test"``, or the file's sha256 does not match.
    FileNotFoundError
        If the file is not found.

    Examples
    --------
    >>> train = bd.datasets.tcga_brca("train")       # mrna, mirna and protein
    >>> test = bd.datasets.tcga_brca("test")         # mrna and mirna only
    >>> train.obs["subtype"].value_counts()
    """
    if split not in _BRCA:
        raise ValueError(f"split must be one of {sorted(_BRCA)}, got {split!r}.")
    name, sha = _BRCA[split]
    mdata = _read_h5mu(fetch_file(locate_file("tcga", name, path), sha))
    mdata.uns["source"] = _BRCA_SOURCE.format(split=split)
    return mdata
