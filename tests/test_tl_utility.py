"""Downstream predictor, its score and ablation utility tables (biodiffuse.tl.utility)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import SHARED_DATA

from biodiffuse.tl import (
    ablation_utility,
    fit_predictor,
    predict_output,
    predictor_score,
    survival_from_clinical,
    utility_summary,
)

TCGA = SHARED_DATA / "tcga"


@pytest.fixture()
def blocks_xy(rng):
    """Labels depend only on block 'b' (its first feature); block 'a' is noise."""
    n = 120
    a, b = rng.normal(size=(n, 3)), rng.normal(size=(n, 2))
    y = np.where(b[:, 0] > 0, "hi", "lo")
    return {"a": a, "b": b}, y


def _split(blocks, y, n_train=80):
    tr = {k: v[:n_train] for k, v in blocks.items()}
    te = {k: v[n_train:] for k, v in blocks.items()}
    return tr, y[:n_train], te, y[n_train:]


# ----------------------------------------------------------------------------- predictor


def test_classifier_outputs_and_block_means(blocks_xy):
    blocks, y = blocks_xy
    tr, ytr, te, yte = _split(blocks, y)
    before = {k: v.copy() for k, v in tr.items()}
    p = fit_predictor(tr, ytr, "classification", n_estimators=50)
    assert p.task == "classification" and p.classes.tolist() == ["hi", "lo"]
    assert p.estimator.n_estimators == 50 and p.estimator.n_jobs == 1
    np.testing.assert_allclose(p.block_means["b"], tr["b"].mean(axis=0))
    for k in tr:  # the user's arrays are untouched
        np.testing.assert_array_equal(tr[k], before[k])
    proba = predict_output(p, te)
    assert proba.shape == (40, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    # blocks are matched by name, not by dict order
    np.testing.assert_array_equal(predict_output(p, {"b": te["b"], "a": te["a"]}), proba)
    acc = predictor_score(p, te, yte, metric="accuracy")
    assert acc == pytest.approx(np.mean(p.classes[proba.argmax(1)] == yte))
    assert acc > 0.85  # a threshold on one feature
    assert predictor_score(p, te, yte) > 0.85  # balanced accuracy


def test_predictor_bad_input(blocks_xy):
    blocks, y = blocks_xy
    p = fit_predictor(blocks, y, n_estimators=10)
    with pytest.raises(ValueError, match=r"missing \['b'\]"):
        predict_output(p, {"a": blocks["a"]})
    with pytest.raises(ValueError, match=r"X\[.b.\] has 3 features; the predictor was fitted on 2"):
        predict_output(p, {"a": blocks["a"], "b": blocks["a"]})
    with pytest.raises(ValueError, match="task"):
        predict_output(p, blocks, task="survival")
    with pytest.raises(ValueError, match="task must be"):
        fit_predictor(blocks, y, task="regression")
    bad = blocks["a"].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"X\['a'\] contains 1 NaN"):
        fit_predictor({"a": bad, "b": blocks["b"]}, y)
    with pytest.raises(ValueError, match="labels; expected 120"):
        fit_predictor(blocks, y[:10])
    with pytest.raises(ValueError, match="single class"):
        fit_predictor(blocks, np.full(120, "x"))
    with pytest.raises(ValueError, match="metric"):
        predictor_score(p, blocks, y, metric="auc")


# ----------------------------------------------------------------------------- ablation


def test_ablation_exact_recovery_and_summary(blocks_xy):
    blocks, y = blocks_xy
    tr, ytr, te, yte = _split(blocks, y)
    p = fit_predictor(tr, ytr, n_estimators=50)
    mean_b = np.broadcast_to(p.block_means["b"], te["b"].shape)
    synth = {
        "copy": [te["b"].copy(), te["b"].copy()],  # a perfect generator: recovers everything
        "mean": [np.array(mean_b)],  # the ablation itself: recovers nothing
    }
    table = ablation_utility(p, te, yte, "b", synth, metric="accuracy")
    assert table[["method", "repeat"]].values.tolist() == [
        ["real", 0],
        ["ablated", 0],
        ["copy", 0],
        ["copy", 1],
        ["mean", 0],
    ]
    s = table.set_index(["method", "repeat"])["score"]
    real, abl = s[("real", 0)], s[("ablated", 0)]
    assert real > 0.85 and abl < 0.75  # the label lives in block b
    assert (table["drop"] == real - abl).all()
    assert s[("copy", 0)] == real and s[("mean", 0)] == abl
    np.testing.assert_allclose(table["recovery"], table["score"] - abl)
    summ = utility_summary(table)
    assert summ.loc["copy", "n_repeats"] == 2 and summ.loc["copy", "score_sd"] == 0.0
    assert summ.loc["copy", "recovery_mean"] == pytest.approx(real - abl)
    assert np.isnan(summ.loc["mean", "score_sd"])  # one repeat: no sample sd


def test_ablation_explicit_means_and_several_targets(blocks_xy):
    blocks, y = blocks_xy
    p = fit_predictor(blocks, y, n_estimators=20)
    m = {"m": [blocks["b"]]}
    hi = ablation_utility(p, blocks, y, "b", m, block_means={"b": np.array([5.0, 0.0])}, metric="accuracy")
    lo = ablation_utility(p, blocks, y, "b", m, block_means={"b": np.array([-5.0, 0.0])}, metric="accuracy")
    # block b's first feature set to +5 (-5) everywhere: every sample is predicted "hi" ("lo")
    assert hi["score"].iloc[1] == pytest.approx(np.mean(y == "hi"))
    assert lo["score"].iloc[1] == pytest.approx(np.mean(y == "lo"))
    both = ablation_utility(p, blocks, y, ["a", "b"], {"m": [{"a": blocks["a"], "b": blocks["b"]}]})
    assert both["score"].iloc[2] == both["score"].iloc[0]


def test_ablation_bad_input(blocks_xy):
    blocks, y = blocks_xy
    p = fit_predictor(blocks, y, n_estimators=10)
    with pytest.raises(ValueError, match="target"):
        ablation_utility(p, blocks, y, "c", {"m": [blocks["b"]]})
    with pytest.raises(ValueError, match=r"shape \(10, 2\)"):
        ablation_utility(p, blocks, y, "b", {"m": [blocks["b"][:10]]})
    with pytest.raises(ValueError, match="empty"):
        ablation_utility(p, blocks, y, "b", {"m": []})
    with pytest.raises(ValueError, match="list of repeats"):
        ablation_utility(p, blocks, y, "b", {"m": blocks["b"]})
    with pytest.raises(ValueError, match="reserved"):
        ablation_utility(p, blocks, y, "b", {"real": [blocks["b"]]})
    with pytest.raises(ValueError, match="exactly the target blocks"):
        ablation_utility(p, blocks, y, ["a", "b"], {"m": [{"a": blocks["a"]}]})
    with pytest.raises(ValueError, match="block_means"):
        ablation_utility(p, blocks, y, "b", {"m": [blocks["b"]]}, block_means={"b": np.zeros(3)})
    flat = fit_predictor(np.hstack([blocks["a"], blocks["b"]]), y, n_estimators=10)
    with pytest.raises(ValueError, match="dict of blocks"):
        ablation_utility(flat, blocks, y, "b", {"m": [blocks["b"]]})


# ----------------------------------------------------------------------------- survival


def test_cox_risk_direction_and_c_index(rng):
    n = 150
    X = rng.normal(size=(n, 3))
    time = rng.exponential(1.0 / np.exp(1.5 * X[:, 0]))  # hazard grows with feature 0
    event = rng.random(n) < 0.8
    p = fit_predictor(X, (time, event), "survival")
    beta = p.estimator.params_.to_numpy()
    assert beta[0] > 0.5 and abs(beta[1]) < 0.3 and abs(beta[2]) < 0.3
    risk = predict_output(p, X)
    assert risk.shape == (n,)
    np.testing.assert_allclose(risk, ((X - X.mean(0)) / X.std(0)) @ beta)
    assert predictor_score(p, X, (time, event)) > 0.7
    # a constant risk is the trivial baseline: C = 0.5
    assert predictor_score(p, np.zeros((n, 3)) + X.mean(0), (time, event)) == pytest.approx(0.5)


def test_survival_bad_input(rng):
    X = rng.normal(size=(10, 2))
    t = rng.uniform(1, 5, 10)
    with pytest.raises(ValueError, match=r"\(time, event\) tuple"):
        fit_predictor(X, t, "survival")
    with pytest.raises(ValueError, match="0/1"):
        fit_predictor(X, (t, np.full(10, 2)), "survival")
    with pytest.raises(ValueError, match="negative"):
        fit_predictor(X, (-t, np.ones(10)), "survival")
    with pytest.raises(ValueError, match="no events"):
        fit_predictor(X, (t, np.zeros(10)), "survival")
    with pytest.raises(ValueError, match="length 5"):
        fit_predictor(X, (t[:5], np.ones(10)), "survival")


def test_survival_from_clinical_hand_values():
    na = -2147483648
    obs = pd.DataFrame(
        {
            "vital_status": [1, 0, 1, 0, np.nan],
            "days_to_death": [100, na, na, na, 50],
            "days_to_last_followup": [na, 300, 20, na, 60],
        },
        index=list("abcde"),
    )
    out = survival_from_clinical(obs)
    assert out.index.tolist() == list("abcde")
    np.testing.assert_array_equal(out["time"].to_numpy(), [100, 300, np.nan, np.nan, np.nan])
    assert out["event"].tolist() == [True, False, True, False, False]
    assert out.dropna().index.tolist() == ["a", "b"]
    with pytest.raises(ValueError, match="no column 'OS'"):
        survival_from_clinical(obs, event="OS")


# ----------------------------------------------------------------------------- real TCGA data


def _read_h5mu(path):
    md = pytest.importorskip("mudata")
    if not path.exists():
        pytest.skip(f"{path} not available")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return md.read_h5mu(path)


def test_brca_protein_ablation_and_recovery():
    """TCGA BRCA (mixOmics train split, 150 patients): subtype from mRNA + miRNA + protein."""
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import train_test_split

    mdata = _read_h5mu(TCGA / "tcga_brca_mixomics_train.h5mu")
    blocks = {m: np.asarray(mdata.mod[m].X, dtype=float) for m in ("mrna", "mirna", "protein")}
    y = mdata.obs["subtype"].astype(str).to_numpy()
    tr, te = train_test_split(np.arange(len(y)), test_size=0.4, stratify=y, random_state=0)
    p = fit_predictor({k: v[tr] for k, v in blocks.items()}, y[tr], seed=0)
    test = {k: v[te] for k, v in blocks.items()}
    # a trivial generator: ridge regression of protein on mRNA + miRNA, plus noise per repeat
    cond = np.hstack([blocks["mrna"], blocks["mirna"]])
    ridge = Ridge(alpha=10.0).fit(cond[tr], blocks["protein"][tr]).predict(cond[te])
    rng = np.random.default_rng(0)
    synth = {"ridge": [ridge + 0.1 * rng.normal(size=ridge.shape) for _ in range(3)]}
    summ = utility_summary(ablation_utility(p, test, y[te], "protein", synth))
    # measured (balanced accuracy, this split): real 0.926, ablated 0.815, ridge 0.926;
    # over 5 splits the drop was 0.07-0.12
    assert summ.loc["real", "score_mean"] > 0.8  # 3 classes: chance is 1/3
    assert summ.loc["real", "drop"] > 0.05
    assert summ.loc["ridge", "recovery_mean"] > 0.05


def test_acc_cox_c_index():
    """TCGA ACC (miniACC): Cox model on log1p RNA, 79 patients with RNA (28 deaths)."""
    mdata = _read_h5mu(TCGA / "tcga_acc_mini.h5mu")
    rna = mdata.mod["RNASeq2GeneNorm"]
    surv = survival_from_clinical(mdata.obs.loc[rna.obs_names]).dropna()
    X = np.log1p(np.asarray(rna[surv.index].X, dtype=float))
    time, event = surv["time"].to_numpy(), surv["event"].to_numpy()
    idx = np.random.default_rng(0).permutation(len(time))
    tr, te = idx[:53], idx[53:]
    p = fit_predictor(X[tr], (time[tr], event[tr]), "survival")
    # measured: training C 0.99; held-out C 0.72-0.85 over 5 splits (0.75 on this one); random = 0.5
    assert predictor_score(p, X[tr], (time[tr], event[tr])) > 0.6
    assert predictor_score(p, X[te], (time[te], event[te])) > 0.6
