"""Counterfactual variance on a MuData: how much a downstream prediction depends on a
missing modality, from a trained multimodal diffusion model.

For every patient lacking ``target`` (or every patient, on request), the model draws K
versions of ``target`` from the modalities the patient has; the downstream predictor scores
each completed patient, and :func:`~biodiffuse.tl.counterfactual_spread` turns the K outputs
into one number per patient. The result goes to ``mdata.obs``; nothing else is changed.
"""

from __future__ import annotations

from typing import Any, Literal, Sequence

import numpy as np
import pandas as pd

from ..data.modality import modality_matrix
from ..diffusion import check_count
from .acquisition import counterfactual_spread
from .utility import FittedPredictor, predict_output

__all__ = ["counterfactual_variance"]


def counterfactual_variance(
    model: Any,
    mdata: Any,
    *,
    target: str,
    predictor: FittedPredictor,
    conditions: Sequence[str] | None = None,
    patients: Literal["missing", "all"] = "missing",
    kind: Literal["disagreement", "variance"] | None = None,
    batch_size: int | None = None,
    n_samples: int = 10,
    steps: int = 18,
    seed: int = 0,
    key_added: str | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> pd.Series:
    """Spread of ``predictor``'s output over ``n_samples`` synthesised versions of ``target``.

    Parameters
    ----------
    model
        A trained :class:`~biodiffuse.models.MultiConditionDiffusion` or
        :class:`~biodiffuse.models.CoherentDenoising` that knows ``target``.
    mdata
        Patients (MuData); modalities matched by name.
    target
        The modality to complete.
    predictor
        From :func:`~biodiffuse.tl.fit_predictor`, fitted on a dict of blocks named after
        modalities of ``mdata`` (``target`` among them), in the modalities' original units.
        A patient lacking one of the other blocks gets that block's training mean (the
        ablation convention of :mod:`biodiffuse.tl.utility`).
    conditions
        Modalities the model conditions on (default: all the model's others the patient has).
    patients
        ``"missing"``: patients without ``target`` (the others get NaN); ``"all"``: every
        patient, as if ``target`` were missing (its values are never read).
    kind
        As :func:`~biodiffuse.tl.counterfactual_spread` (classification: ``"disagreement"``
        by default, or ``"variance"``; survival: ``"variance"``).
    batch_size, n_samples, steps, seed, device
        As the model's ``sample`` (``n_samples`` at least 2); the same seed gives a patient
        the same draws whatever the other patients.
    key_added
        Column of ``mdata.obs`` to write (default ``f"counterfactual_variance_{target}"``).
    overwrite
        Replace an existing column of that name (else KeyError, nothing written).

    Returns
    -------
    pandas.Series
        The score per patient (index ``mdata.obs_names``), also in ``mdata.obs[key_added]``.

    Raises
    ------
    ValueError
        If ``target`` is not a block of the predictor, another block is not a modality of ``mdata``,
        ``n_samples < 2``, ``patients`` is unknown, or no patient qualifies.
    KeyError
        If ``mdata.obs[key_added]`` exists and ``overwrite`` is False.
    TypeError
        If ``predictor`` is not a :class:`~biodiffuse.tl.FittedPredictor` with named blocks.

    Examples
    --------
    >>> clf = bd.tl.fit_predictor({m: train.mod[m].X for m in ["mrna", "mirna", "protein"]}, train.obs["subtype"])
    >>> score = bd.tl.counterfactual_variance(model, test, target="protein", predictor=clf, n_samples=10)
    >>> test.obs["counterfactual_variance_protein"].sort_values(ascending=False).head()   # acquire these first
    """
    if not isinstance(predictor, FittedPredictor) or predictor.blocks is None:
        raise TypeError("predictor must be a FittedPredictor fitted on a dict of modality blocks (bd.tl.fit_predictor).")
    if target not in predictor.blocks:
        raise ValueError(f"target {target!r} is not a block of the predictor {list(predictor.blocks)}.")
    missing = [b for b in predictor.blocks if b != target and b not in mdata.mod]  # target: may be absent
    if missing:
        raise ValueError(f"The predictor's blocks {missing} are not modalities of mdata {list(mdata.mod)}.")
    check_count(n_samples, "n_samples", minimum=2)  # a spread needs two draws
    if patients not in ("missing", "all"):
        raise ValueError(f"patients must be 'missing' or 'all', got {patients!r}.")
    key = f"counterfactual_variance_{target}" if key_added is None else key_added
    if not isinstance(key, str) or not key:
        raise ValueError(f"key_added must be a non-empty string, got {key_added!r}.")
    if key in mdata.obs.columns and not overwrite:
        raise KeyError(f"mdata.obs[{key!r}] exists; pass overwrite=True or another key_added.")
    # patients lacking the target; a MuData without that modality at all (e.g. a test split of
    # patients never measured for it) lacks it for everyone
    present_target = modality_matrix(mdata, target)[1] if target in mdata.mod else np.zeros(mdata.n_obs, bool)
    chosen = np.flatnonzero(~present_target) if patients == "missing" else np.arange(mdata.n_obs)
    if len(chosen) == 0:
        raise ValueError(f"Every patient has {target!r}; pass patients='all' to score them anyway.")
    means = predictor.block_means
    blocks: dict[str, np.ndarray] = {}
    for name in predictor.blocks:
        if name == target:
            continue
        x, present = modality_matrix(mdata, name)
        x = x[chosen]
        x[~present[chosen]] = means[name]
        blocks[name] = x
    res = model.sample(
        mdata, target=target, conditions=conditions, indices=chosen, batch_size=batch_size, n_samples=n_samples,
        steps=steps, seed=seed, device=device,
    )
    outs = np.stack([predict_output(predictor, {**blocks, target: draw}) for draw in res["features"]])
    score = np.full(mdata.n_obs, np.nan)
    score[chosen] = counterfactual_spread(outs, predictor.task, kind)
    series = pd.Series(score, index=mdata.obs_names, name=key)
    mdata.obs[key] = series.to_numpy()
    return series
