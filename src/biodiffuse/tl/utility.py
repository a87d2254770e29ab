"""Downstream utility of synthesised modalities: a predictor, its score, and ablation tables.

The Coherent Denoising paper tests synthetic modalities by what they are worth to a
downstream model trained on complete real data: its score with all real blocks
("real"), with a block missing ("ablated"), and with that block replaced by a
synthesised version (one score per generation seed). This module does that on plain
arrays; the models' MuData wrappers call it.

Choices (stated once, here):

- Classification: :class:`sklearn.ensemble.RandomForestClassifier` with 500 trees, as
  in the paper (its public code uses 100). The default score is the **balanced
  accuracy** (the paper's supplementary tables report it next to the macro F1, which is
  available as ``metric="f1_macro"``): it is not inflated by the majority class.
- Survival: :class:`lifelines.CoxPHFitter` with a ridge penalty (``penalizer=0.1``) on
  features standardised with the training mean and standard deviation, so that the
  penalty treats all features alike. The paper uses a random survival forest; a
  penalised Cox model needs no extra dependency beyond lifelines and gives a risk score
  (the linear predictor) with a clear meaning. The score is Harrell's C-index.
- Ablation replaces the missing block by its **training mean**, which the fitted
  predictor stores (:attr:`FittedPredictor.block_means`); for the Cox model this is
  exactly "the block contributes nothing" (its standardised value is 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..metrics import as_float_2d as _as_float_2d

__all__ = [
    "FittedPredictor",
    "ablation_utility",
    "fit_predictor",
    "predict_output",
    "predictor_score",
    "survival_from_clinical",
    "utility_summary",
]

Task = Literal["classification", "survival"]
Features = np.ndarray | pd.DataFrame | Mapping[str, np.ndarray]

_TASKS = ("classification", "survival")
_CLASS_METRICS = ("balanced_accuracy", "accuracy", "f1_macro")


@dataclass
class FittedPredictor:
    """A fitted downstream model plus what is needed to ablate its input blocks.

    Parameters
    ----------
    estimator, task, feature_mean, feature_scale, blocks, classes
        As the attributes below. Made by :func:`fit_predictor`, not by hand.

    Attributes
    ----------
    estimator
        The fitted :class:`~sklearn.ensemble.RandomForestClassifier` or
        :class:`~lifelines.CoxPHFitter`.
    task
        ``"classification"`` or ``"survival"``.
    feature_mean
        Training mean of every input feature, shape ``(n_features,)``.
    feature_scale
        Survival only: training standard deviation used to standardise the features
        (1 where a feature is constant); ``None`` for classification.
    blocks
        Block name -> column slice, in training order, when the predictor was fitted on
        a dict of blocks; ``None`` when it was fitted on one array.
    classes
        Classification only: the class labels, in the column order of
        :func:`predict_output`.

    Examples
    --------
    >>> blocks = {m: train.mod[m].X for m in ["mrna", "mirna", "protein"]}
    >>> clf = bd.tl.fit_predictor(blocks, train.obs["subtype"].to_numpy())
    >>> clf.task, clf.classes, list(clf.blocks)
    >>> clf.block_means["protein"].shape       # (n_proteins,): what ablation puts in its place
    """

    estimator: Any
    task: str
    feature_mean: np.ndarray
    feature_scale: np.ndarray | None = None
    blocks: dict[str, slice] | None = None
    classes: np.ndarray | None = None

    @property
    def n_features(self) -> int:
        """Number of input features the predictor expects."""
        return int(self.feature_mean.shape[0])

    @property
    def block_means(self) -> dict[str, np.ndarray]:
        """Training mean of each block (name -> array of the block's width)."""
        if self.blocks is None:
            raise ValueError("This predictor was fitted on one array, not on named blocks; it has no block_means.")
        return {name: self.feature_mean[sl].copy() for name, sl in self.blocks.items()}


# --------------------------------------------------------------------------- validation


def _check_task(task: str | None, predictor: FittedPredictor | None = None) -> str:
    if predictor is not None:
        if not isinstance(predictor, FittedPredictor):
            raise TypeError(f"predictor must be a FittedPredictor from fit_predictor, got {type(predictor).__name__}.")
        if task is not None and task != predictor.task:
            raise ValueError(f"task={task!r} does not match the predictor's task {predictor.task!r}.")
        return predictor.task
    if task not in _TASKS:
        raise ValueError(f"task must be one of {_TASKS}, got {task!r}.")
    return task


def _block_matrix(X: Features, name: str) -> tuple[np.ndarray, dict[str, slice] | None]:
    """Features as one float matrix, with block slices when ``X`` is a dict of blocks."""
    if isinstance(X, Mapping):
        if len(X) == 0:
            raise ValueError(f"{name} is an empty dict of blocks.")
        mats, blocks, start, n = [], {}, 0, None
        for key, block in X.items():
            arr = _as_float_2d(block, f"{name}[{key!r}]")
            if n is not None and arr.shape[0] != n:
                raise ValueError(f"{name}[{key!r}] has {arr.shape[0]} rows; the other blocks have {n}.")
            n = arr.shape[0]
            blocks[str(key)] = slice(start, start + arr.shape[1])
            start += arr.shape[1]
            mats.append(arr)
        return np.hstack(mats), blocks
    return _as_float_2d(X, name), None


def _features_for(predictor: FittedPredictor, X: Features, name: str = "X") -> np.ndarray:
    """``X`` as the predictor's feature matrix; blocks are matched by name, not position."""
    if isinstance(X, Mapping) and predictor.blocks is not None:
        missing = [b for b in predictor.blocks if b not in X]
        extra = [b for b in X if b not in predictor.blocks]
        if missing or extra:
            raise ValueError(
                f"{name} blocks do not match the predictor's: missing {missing}, unexpected {extra} "
                f"(expected {list(predictor.blocks)})."
            )
        X = {b: X[b] for b in predictor.blocks}
        mat, blocks = _block_matrix(X, name)
        for b, sl in predictor.blocks.items():
            width = blocks[b].stop - blocks[b].start
            if width != sl.stop - sl.start:
                raise ValueError(
                    f"{name}[{b!r}] has {width} features; the predictor was fitted on {sl.stop - sl.start}."
                )
        return mat
    mat, _ = _block_matrix(X, name)
    if mat.shape[1] != predictor.n_features:
        raise ValueError(f"{name} has {mat.shape[1]} features; the predictor was fitted on {predictor.n_features}.")
    return mat


def _survival_arrays(y: Any, n: int, name: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """Validate a ``(time, event)`` pair of length ``n``."""
    if isinstance(y, pd.DataFrame) or not isinstance(y, (tuple, list)) or len(y) != 2:
        raise ValueError(f"{name} must be a (time, event) tuple for task='survival'.")
    time = np.asarray(y[0], dtype=np.float64).ravel()
    event_raw = np.asarray(y[1]).ravel()
    for part, arr in (("time", time), ("event", event_raw)):
        if arr.shape[0] != n:
            raise ValueError(f"{name} {part} has length {arr.shape[0]}; expected {n} (one per sample).")
    if not np.isfinite(time).all():
        raise ValueError(f"{name} time contains {int((~np.isfinite(time)).sum())} NaN / inf value(s).")
    if (time < 0).any():
        raise ValueError(f"{name} time has {int((time < 0).sum())} negative value(s).")
    try:
        event = event_raw.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} event must be 0/1 or boolean.") from err
    if not np.isin(event, (0.0, 1.0)).all():
        raise ValueError(f"{name} event must contain only 0/1 (or False/True).")
    return time, event.astype(bool)


def _class_labels(y: Any, n: int, name: str = "y") -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample), got shape {arr.shape}.")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels; expected {n} (one per sample).")
    if pd.isna(arr).any():
        raise ValueError(f"{name} contains {int(pd.isna(arr).sum())} missing label(s).")
    return arr


# --------------------------------------------------------------------------- predictor


def fit_predictor(
    X: Features,
    y: Any,
    task: Task = "classification",
    seed: int = 0,
    *,
    n_estimators: int = 500,
    penalizer: float = 0.1,
    **kw: Any,
) -> FittedPredictor:
    """Fit the downstream predictor on real training data.

    Parameters
    ----------
    X
        Samples x features: an array / DataFrame, or a dict ``{block name: array}`` whose
        blocks are concatenated in the dict's order (needed by :func:`ablation_utility`).
    y
        Classification: one label per sample. Survival: a ``(time, event)`` tuple, time
        >= 0 and event 0/1 (1 = the event happened; 0 = censored at ``time``).
    task
        ``"classification"`` (random forest) or ``"survival"`` (penalised Cox model).
    seed
        Random state of the forest (the Cox fit is deterministic).
    n_estimators
        Trees of the forest (500 as in the paper).
    penalizer
        Ridge penalty of the Cox model on standardised features.
    **kw
        Passed to :class:`~sklearn.ensemble.RandomForestClassifier` (default
        ``n_jobs=1``) or :class:`~lifelines.CoxPHFitter` (e.g. ``l1_ratio``).

    Returns
    -------
    FittedPredictor

    Raises
    ------
    ValueError
        On an unknown task, non-finite or empty features, or labels / times of the wrong
        length or with missing values.

    Examples
    --------
    >>> mdata = bd.datasets.tcga_brca("train")
    >>> blocks = {m: mdata.mod[m].X for m in ["mrna", "mirna", "protein"]}
    >>> clf = bd.tl.fit_predictor(blocks, mdata.obs["subtype"].to_numpy(), n_estimators=500, seed=0)
    >>> cox = bd.tl.fit_predictor(X, (time, event), task="survival", penalizer=0.1)
    """
    task = _check_task(task)
    mat, blocks = _block_matrix(X, "X")
    n = mat.shape[0]
    mean = mat.mean(axis=0)
    if task == "classification":
        from sklearn.ensemble import RandomForestClassifier

        labels = _class_labels(y, n)
        if np.unique(labels).shape[0] < 2:
            raise ValueError("y has a single class; a classifier needs at least two.")
        kw.setdefault("n_jobs", 1)
        est = RandomForestClassifier(n_estimators=n_estimators, random_state=seed, **kw).fit(mat, labels)
        return FittedPredictor(est, task, mean, None, blocks, np.asarray(est.classes_))

    from lifelines import CoxPHFitter

    time, event = _survival_arrays(y, n)
    if not event.any():
        raise ValueError("y event has no events (all censored); a Cox model cannot be fitted.")
    scale = mat.std(axis=0)
    scale[scale == 0] = 1.0
    cols = [f"x{i}" for i in range(mat.shape[1])]
    df = pd.DataFrame((mat - mean) / scale, columns=cols)
    df["__time"], df["__event"] = time, event.astype(int)
    est = CoxPHFitter(penalizer=penalizer, **kw).fit(df, duration_col="__time", event_col="__event")
    return FittedPredictor(est, task, mean, scale, blocks, None)


def predict_output(predictor: FittedPredictor, X: Features, task: Task | None = None) -> np.ndarray:
    """Class probabilities or risk scores of a fitted predictor.

    Parameters
    ----------
    predictor
        From :func:`fit_predictor`.
    X
        Samples x features, or a dict of blocks matched to the training blocks by name.
    task
        Optional check: must equal the predictor's task.

    Returns
    -------
    numpy.ndarray
        Classification: ``(n, n_classes)`` probabilities, columns in
        ``predictor.classes`` order. Survival: ``(n,)`` risk = the Cox linear predictor
        (log partial hazard); higher means earlier event.

    Examples
    --------
    >>> probs = bd.tl.predict_output(clf, test_blocks)         # (n, n_classes)
    >>> labels = clf.classes[probs.argmax(1)]
    >>> risk = bd.tl.predict_output(cox, X_test)               # (n,) for a survival model
    """
    task = _check_task(task, predictor)
    mat = _features_for(predictor, X)
    if task == "classification":
        return predictor.estimator.predict_proba(mat)
    beta = predictor.estimator.params_.to_numpy()
    return ((mat - predictor.feature_mean) / predictor.feature_scale) @ beta


def _score_output(predictor: FittedPredictor, output: np.ndarray, y: Any, metric: str | None) -> float:
    n = output.shape[0]
    if predictor.task == "survival":
        from lifelines.utils import concordance_index

        if metric not in (None, "c_index"):
            raise ValueError(f"metric={metric!r} is not available for survival; use 'c_index'.")
        time, event = _survival_arrays(y, n)
        if not event.any():
            raise ValueError("y event has no events; the C-index is undefined.")
        # lifelines expects scores that grow with survival time: the negative risk.
        return float(concordance_index(time, -output, event))
    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    metric = metric or "balanced_accuracy"
    if metric not in _CLASS_METRICS:
        raise ValueError(f"metric must be one of {_CLASS_METRICS} for classification, got {metric!r}.")
    labels = _class_labels(y, n)
    pred = predictor.classes[np.argmax(output, axis=1)]
    if metric == "accuracy":
        return float(accuracy_score(labels, pred))
    if metric == "f1_macro":
        return float(f1_score(labels, pred, average="macro", labels=predictor.classes, zero_division=0))
    return float(balanced_accuracy_score(labels, pred))


def predictor_score(
    predictor: FittedPredictor, X: Features, y: Any, task: Task | None = None, metric: str | None = None
) -> float:
    """Score of a fitted predictor on (real or synthetic) features.

    Parameters
    ----------
    predictor
        From :func:`fit_predictor`.
    X
        Samples x features, or a dict of blocks matched by name.
    y
        Labels (classification) or a ``(time, event)`` tuple (survival).
    task
        Optional check: must equal the predictor's task.
    metric
        Classification: ``"balanced_accuracy"`` (default), ``"accuracy"`` or
        ``"f1_macro"``. Survival: ``"c_index"`` (Harrell's, via
        :func:`lifelines.utils.concordance_index` on the negative risk; 0.5 = random).

    Returns
    -------
    float

    Examples
    --------
    >>> bd.tl.predictor_score(clf, test_blocks, y_test)                      # balanced accuracy
    >>> bd.tl.predictor_score(clf, test_blocks, y_test, metric="f1_macro")
    >>> bd.tl.predictor_score(cox, X_test, (time_test, event_test))           # Harrell's C-index
    """
    _check_task(task, predictor)
    return _score_output(predictor, predict_output(predictor, X), y, metric)


# --------------------------------------------------------------------------- ablation


def ablation_utility(
    predictor: FittedPredictor,
    X_test_blocks: Mapping[str, np.ndarray],
    y_test: Any,
    target: str | Sequence[str],
    synthesized: Mapping[str, Sequence[np.ndarray | Mapping[str, np.ndarray]]],
    task: Task | None = None,
    *,
    block_means: Mapping[str, np.ndarray] | None = None,
    metric: str | None = None,
) -> pd.DataFrame:
    """Score with real, ablated and synthesised target block(s): the paper's utility table.

    Parameters
    ----------
    predictor
        Fitted on a dict of blocks by :func:`fit_predictor`.
    X_test_blocks
        Real test blocks, ``{name: (n, width)}``, the same names as the training blocks.
    y_test
        Test labels or ``(time, event)``.
    target
        The block (or blocks) that is missing and synthesised.
    synthesized
        ``{method: [repeat_0, repeat_1, ...]}``, one entry per generation seed. With one
        target a repeat is an ``(n, width)`` array; with several it is a dict
        ``{target name: array}``.
    task
        Optional check: must equal the predictor's task.
    block_means
        What an ablated block is replaced with: ``{name: (width,)}``. Default: the
        predictor's training means (:attr:`FittedPredictor.block_means`).
    metric
        As in :func:`predictor_score`.

    Returns
    -------
    pandas.DataFrame
        One row per score: ``method`` (``"real"``, ``"ablated"``, then each method),
        ``repeat``, ``score``, ``drop`` (real - ablated, the same on every row) and
        ``recovery`` (score - ablated). :func:`utility_summary` gives means and standard
        deviations over repeats.

    Raises
    ------
    ValueError
        On block names that do not match the predictor's, a target that is not a block,
        synthetic arrays of the wrong shape or with NaN, or an empty ``synthesized`` list.

    Examples
    --------
    >>> clf = bd.tl.fit_predictor(train_blocks, y_train)          # {"mrna": ..., "mirna": ..., "protein": ...}
    >>> synth = {"MCD": [model.sample(test, target="protein", seed=s)["mean"] for s in range(3)]}
    >>> table = bd.tl.ablation_utility(clf, test_blocks, y_test, target="protein", synthesized=synth)
    >>> bd.tl.utility_summary(table)
    """
    _check_task(task, predictor)
    if predictor.blocks is None:
        raise ValueError("predictor was fitted on one array; fit it on a dict of blocks to ablate a block.")
    if not isinstance(X_test_blocks, Mapping):
        raise TypeError("X_test_blocks must be a dict {block name: array}.")
    targets = [target] if isinstance(target, str) else list(target)
    if not targets:
        raise ValueError("target is empty; name at least one block.")
    unknown = [t for t in targets if t not in predictor.blocks]
    if unknown:
        raise ValueError(f"target {unknown} not among the predictor's blocks {list(predictor.blocks)}.")
    real = {k: _as_float_2d(v, f"X_test_blocks[{k!r}]") for k, v in X_test_blocks.items()}
    X_real = _features_for(predictor, real, "X_test_blocks")
    n = X_real.shape[0]

    means = predictor.block_means if block_means is None else dict(block_means)
    ablated = dict(real)
    for t in targets:
        if t not in means:
            raise ValueError(f"block_means has no entry for target {t!r}.")
        m = np.asarray(means[t], dtype=np.float64).ravel()
        width = real[t].shape[1]
        if m.shape[0] != width or not np.isfinite(m).all():
            raise ValueError(f"block_means[{t!r}] must be {width} finite values, got shape {m.shape}.")
        ablated[t] = np.broadcast_to(m, (n, width))

    def score(blocks: Mapping[str, np.ndarray]) -> float:
        return _score_output(predictor, predict_output(predictor, blocks), y_test, metric)

    rows = [("real", 0, score(real)), ("ablated", 0, score(ablated))]
    if not isinstance(synthesized, Mapping):
        raise TypeError("synthesized must be a dict {method: [array per repeat]}.")
    for method, repeats in synthesized.items():
        if method in ("real", "ablated"):
            raise ValueError(f"synthesized method name {method!r} is reserved; rename it.")
        if isinstance(repeats, np.ndarray) and repeats.ndim == 2:
            raise ValueError(f"synthesized[{method!r}] must be a list of repeats; wrap a single array in a list.")
        if len(repeats) == 0:
            raise ValueError(f"synthesized[{method!r}] is empty.")
        for r, rep in enumerate(repeats):
            blocks = dict(real)
            if len(targets) == 1 and not isinstance(rep, Mapping):
                rep = {targets[0]: rep}
            if not isinstance(rep, Mapping) or set(rep) != set(targets):
                raise ValueError(f"synthesized[{method!r}][{r}] must give exactly the target blocks {targets}.")
            for t in targets:
                arr = _as_float_2d(rep[t], f"synthesized[{method!r}][{r}][{t!r}]")
                if arr.shape != real[t].shape:
                    raise ValueError(
                        f"synthesized[{method!r}][{r}][{t!r}] has shape {arr.shape}; the real block has {real[t].shape}."
                    )
                blocks[t] = arr
            rows.append((str(method), r, score(blocks)))

    table = pd.DataFrame(rows, columns=["method", "repeat", "score"])
    s_real, s_abl = rows[0][2], rows[1][2]
    table["drop"] = s_real - s_abl
    table["recovery"] = table["score"] - s_abl
    return table


def utility_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over repeats of an :func:`ablation_utility` table.

    Parameters
    ----------
    table
        The long table from :func:`ablation_utility`.

    Returns
    -------
    pandas.DataFrame
        Indexed by method (in table order): ``n_repeats``, ``score_mean``, ``score_sd``,
        ``recovery_mean``, ``recovery_sd`` (sample standard deviations, ddof = 1; NaN with
        one repeat) and ``drop``.

    Examples
    --------
    >>> table = bd.tl.ablation_utility(clf, test_blocks, y_test, target="protein", synthesized=synth)
    >>> bd.tl.utility_summary(table)[["score_mean", "score_sd", "recovery_mean"]]
    """
    needed = {"method", "score", "recovery", "drop"}
    if not needed.issubset(table.columns):
        raise ValueError(f"table lacks columns {sorted(needed - set(table.columns))}; pass ablation_utility's output.")
    g = table.groupby("method", sort=False)
    out = pd.DataFrame(
        {
            "n_repeats": g["score"].size(),
            "score_mean": g["score"].mean(),
            "score_sd": g["score"].std(ddof=1),
            "recovery_mean": g["recovery"].mean(),
            "recovery_sd": g["recovery"].std(ddof=1),
            "drop": g["drop"].first(),
        }
    )
    return out


# --------------------------------------------------------------------------- clinical


def survival_from_clinical(
    obs: pd.DataFrame,
    event: str = "vital_status",
    time_to_event: str = "days_to_death",
    time_to_censoring: str = "days_to_last_followup",
    missing: Sequence[float] = (-2147483648,),
) -> pd.DataFrame:
    """Survival time and event from a TCGA-style clinical table.

    Parameters
    ----------
    obs
        Clinical table, one row per patient (e.g. ``mdata.obs``). Not modified.
    event
        Column with 1 (dead / event) or 0 (alive / censored).
    time_to_event, time_to_censoring
        Columns with the time of the event and of the last follow-up.
    missing
        Codes meaning "not recorded" (TCGA's R export uses the integer NA,
        -2147483648), treated like NaN.

    Returns
    -------
    pandas.DataFrame
        Index ``obs.index``; ``time`` (``time_to_event`` where the event happened,
        otherwise ``time_to_censoring``) and ``event`` (bool). Rows whose time or event is
        unknown or negative have NaN ``time``: drop them with ``.dropna()`` before fitting.

    Examples
    --------
    >>> mdata = bd.datasets.tcga_acc()
    >>> rna = mdata.mod["RNASeq2GeneNorm"]
    >>> surv = bd.tl.survival_from_clinical(mdata.obs.loc[rna.obs_names]).dropna()
    >>> cox = bd.tl.fit_predictor(rna[surv.index].X, (surv["time"], surv["event"]), task="survival")
    """
    for col in (event, time_to_event, time_to_censoring):
        if col not in obs.columns:
            raise ValueError(f"obs has no column {col!r}.")

    def clean(col: str) -> np.ndarray:
        v = pd.to_numeric(obs[col], errors="coerce").to_numpy(dtype=np.float64)
        v[np.isin(v, np.asarray(missing, dtype=np.float64))] = np.nan
        return v

    ev = clean(event)
    bad_ev = ~np.isnan(ev) & ~np.isin(ev, (0.0, 1.0))
    if bad_ev.any():
        raise ValueError(f"obs[{event!r}] must be 0/1; found {np.unique(ev[bad_ev])[:5].tolist()}.")
    time = np.where(ev == 1, clean(time_to_event), clean(time_to_censoring))
    time[np.isnan(ev) | (time < 0)] = np.nan
    return pd.DataFrame({"time": time, "event": ev == 1}, index=obs.index)
