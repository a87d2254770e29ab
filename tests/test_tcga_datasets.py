"""TCGA MuData loaders: sha256 check, clinical cleaning, survival columns, values untouched."""

from __future__ import annotations

import shutil
import warnings

import numpy as np
import pytest
from conftest import SHARED_DATA

from biodiffuse.datasets import tcga_acc, tcga_brca
from biodiffuse.datasets.tcga import R_NA_INTEGER

TCGA = SHARED_DATA / "tcga"
pytestmark = pytest.mark.skipif(not (TCGA / "tcga_acc_mini.h5mu").is_file(), reason="shared TCGA data not found")

ACC_SHAPES = {
    "RNASeq2GeneNorm": (79, 198),
    "gistict": (90, 198),
    "RPPAArray": (46, 33),
    "Mutations": (90, 97),
    "miRNASeqGene": (80, 471),
}


@pytest.fixture(scope="module")
def acc():
    return tcga_acc(path=TCGA)


def _raw(name: str):
    import mudata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mudata.read_h5mu(TCGA / name)


def test_acc_shapes_and_modality_values_untouched(acc):
    assert acc.n_obs == 92
    assert {k: a.shape for k, a in acc.mod.items()} == ACC_SHAPES
    raw = _raw("tcga_acc_mini.h5mu")
    for k in ACC_SHAPES:
        np.testing.assert_array_equal(np.asarray(acc.mod[k].X), np.asarray(raw.mod[k].X))
        assert list(acc.mod[k].obs_names) == list(raw.mod[k].obs_names)
    assert "miniACC" in acc.uns["source"] and "131e0bf" in acc.uns["source"]


def test_acc_clinical_missing_values_cleaned(acc):
    obs = acc.obs
    for col in obs.columns:
        s = obs[col]
        if s.dtype.kind in "iuf":
            assert not (s == R_NA_INTEGER).any(), col
        elif hasattr(s, "cat"):
            assert "None" not in list(s.cat.categories), col
    raw = _raw("tcga_acc_mini.h5mu").obs
    # 58 alive patients have no days_to_death; 61 no lymph-node count (counted in the file).
    assert obs["days_to_death"].isna().sum() == (raw["days_to_death"] == R_NA_INTEGER).sum() == 58
    assert obs["number_of_lymph_nodes"].isna().sum() == 61
    assert obs["pathologic_stage"].isna().sum() == (raw["pathologic_stage"].astype(str) == "None").sum() == 2
    known = raw["days_to_death"] != R_NA_INTEGER
    np.testing.assert_array_equal(obs["days_to_death"][known].to_numpy(), raw["days_to_death"][known].to_numpy())


def test_acc_survival_columns(acc):
    obs = acc.obs
    assert obs["survival_event"].dtype == bool
    assert obs["survival_event"].sum() == 34  # vital_status == 1
    dead = obs["survival_event"].to_numpy()
    np.testing.assert_array_equal(obs["survival_time"][dead], obs["days_to_death"][dead])
    np.testing.assert_array_equal(obs["survival_time"][~dead], obs["days_to_last_followup"][~dead])
    assert obs["survival_time"].notna().all() and (obs["survival_time"] >= 0).all()
    first = obs.loc["TCGA-OR-A5J1"]  # dead at 1355 days; TCGA-OR-A5J3 alive, followed 2091 days
    assert first["survival_event"] and first["survival_time"] == 1355
    assert not obs.loc["TCGA-OR-A5J3", "survival_event"] and obs.loc["TCGA-OR-A5J3", "survival_time"] == 2091


def test_brca_splits():
    train, test = tcga_brca("train", path=TCGA), tcga_brca("test", path=TCGA)
    assert {k: a.shape for k, a in train.mod.items()} == {
        "mrna": (150, 200),
        "mirna": (150, 184),
        "protein": (150, 142),
    }
    assert {k: a.shape for k, a in test.mod.items()} == {"mrna": (70, 200), "mirna": (70, 184)}
    assert train.obs["subtype"].value_counts().to_dict() == {"LumA": 75, "Basal": 45, "Her2": 30}
    assert not set(train.obs_names) & set(test.obs_names)
    assert "mixOmics" in train.uns["source"] and "data.test" in test.uns["source"]
    with pytest.raises(ValueError, match="split"):
        tcga_brca("validation", path=TCGA)


def test_new_object_every_call(acc):
    again = tcga_acc(path=TCGA)
    again.mod["RPPAArray"].X[0, 0] = 1e6
    again.obs["survival_time"] = 0.0
    assert acc.mod["RPPAArray"].X[0, 0] != 1e6 and acc.obs["survival_time"].max() > 0


def test_sha256_mismatch_and_missing_file(tmp_path):
    bad = tmp_path / "tcga_brca_mixomics_test.h5mu"
    shutil.copy(TCGA / bad.name, bad)
    with open(bad, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        tcga_brca("test", path=tmp_path)
    with pytest.raises(FileNotFoundError, match="tcga_acc_mini.h5mu"):
        tcga_acc(path=tmp_path)
