"""One table of bad inputs across every model: each case must raise a clear error that names
the key and the problem, and leave the user's object exactly as it was.

Tiny synthetic objects and networks; the trained models train for two epochs (the cases test
validation, not learning).
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any, Callable

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from mudata import MuData

from biodiffuse.models import MCD, CoherentDenoising, GeneFlow, MultiConditionDiffusion, SpaDiT, StainDiffuser
from biodiffuse.train import TrainingDivergedError

from _tiny import channels, citeseq, histology, mudata, spatial_pair, staining

QUIET = dict(enable_progress_bar=False, accelerator="cpu", devices=1)
RNG = np.random.default_rng(0)


# --- snapshot of a user's object ------------------------------------------------------------


def snapshot(obj: Any) -> Any:
    if hasattr(obj, "images") and hasattr(obj, "tables"):  # SpatialData
        return {"tables": {k: snapshot(v) for k, v in obj.tables.items()}, "images": sorted(obj.images.keys()),
                "attrs": json.dumps({k: str(v) for k, v in obj.attrs.items()}, sort_keys=True)}
    if isinstance(obj, MuData):
        return {k: snapshot(v) for k, v in obj.mod.items()} | {"uns": sorted(obj.uns.keys()), "mod": sorted(obj.mod.keys())}
    x = obj.X.toarray() if hasattr(obj.X, "toarray") else np.asarray(obj.X)
    return {
        "X": x.copy(),
        "obs": obj.obs.copy(),
        "var_names": list(obj.var_names),
        "obsm": {k: copy.deepcopy(v) for k, v in obj.obsm.items()},
        "layers": sorted(obj.layers.keys()),
        "uns": json.dumps({k: str(v) for k, v in obj.uns.items()}, sort_keys=True),
    }


def assert_same(a: Any, b: Any) -> None:
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b)
    elif isinstance(a, pd.DataFrame):
        pd.testing.assert_frame_equal(a, b)
    else:
        assert a == b


# --- trained tiny models (module scope) ---------------------------------------------------------


@pytest.fixture(scope="module")
def mcd_channels() -> MCD:
    a = channels()
    MCD.setup_anndata(a)
    m = MCD(a, model_channels=8, channel_mult=(1,), heads=1)
    m.train(max_epochs=2, **QUIET)
    return m


@pytest.fixture(scope="module")
def mcd_genes() -> MCD:
    a = citeseq()
    MCD.setup_anndata(a, protein_obsm_key="protein")
    m = MCD(a, n_genes=None, model_channels=8, channel_mult=(1,), heads=1)
    m.train(max_epochs=2, **QUIET)
    return m


@pytest.fixture(scope="module")
def spadit() -> SpaDiT:
    sp, ref = spatial_pair()
    SpaDiT.setup_anndata(sp, reference=ref)
    m = SpaDiT(sp, reference=ref, dim=16, depth=1, heads=2, ref_heads=1, bank_size=16)
    m.train(max_epochs=2, **QUIET)
    return m


@pytest.fixture(scope="module")
def multicond() -> MultiConditionDiffusion:
    md = mudata()
    MultiConditionDiffusion.setup_mudata(md, modalities=["rna", "prot"])
    m = MultiConditionDiffusion(md, latent_dim=3, hidden=16, layers=1, emb_dim=8)
    m.train(max_epochs=2, **QUIET)
    return m


@pytest.fixture(scope="module")
def mcd_image() -> MCD:
    s = staining()[0]
    MCD.setup_spatialdata(s, image_key="mihc", tile_size=16, downsample=1)
    m = MCD(s, model_channels=8, channel_mult=(1, 1, 1), heads=1)
    m.train(max_epochs=1, batch_size=32, **QUIET)
    return m


@pytest.fixture(scope="module")
def staindiffuser() -> StainDiffuser:
    s = staining()[0]
    StainDiffuser.setup_spatialdata(s)
    m = StainDiffuser(s, crop_size=16, model_channels=8, channel_mult=(1, 2))
    m.train(max_epochs=1, batch_size=8, **QUIET)
    return m


# --- the table ------------------------------------------------------------------------------------
# Each case: (name, make the user's object, the call that must fail, the error type, a regex
# the message must match). The call gets the object and the pytest request (for fixtures).


def _with_nan(a: AnnData) -> AnnData:
    a.X[0, 0] = np.nan
    return a


def _with_inf(a: AnnData) -> AnnData:
    a.X[1, 2] = np.inf
    return a


def _negative(a: AnnData) -> AnnData:
    a.X[2, 1] = -3.0
    return a


def _dup_names(a: AnnData) -> AnnData:
    names = list(a.var_names)
    names[1] = names[0]
    a.var_names = names
    return a


def _suffix(a: AnnData, suffix: str = "_PROT") -> AnnData:
    a.var_names = [f"{v}{suffix}" for v in a.var_names]
    return a


def _fx(name: str) -> Callable:
    return lambda request: request.getfixturevalue(name)


CASES: list[tuple[str, Callable[[], Any], Callable[[Any, Any], Any], type, str]] = [
    # set-up: values and names
    ("MCD genes NaN counts", lambda: _with_nan(citeseq()), lambda a, r: MCD.setup_anndata(a, protein_obsm_key="protein"), ValueError, r"X.*NaN"),
    ("MCD genes negative counts", lambda: _negative(citeseq()), lambda a, r: MCD.setup_anndata(a, protein_obsm_key="protein"), ValueError, r"X.*negative"),
    ("MCD genes inf counts", lambda: _with_inf(citeseq()), lambda a, r: MCD.setup_anndata(a, protein_obsm_key="protein"), ValueError, r"X.*inf"),
    ("MCD duplicate gene names", lambda: _dup_names(citeseq()), lambda a, r: MCD.setup_anndata(a, protein_obsm_key="protein"), ValueError, r"(?i)duplicate|unique"),
    ("MCD missing obsm key", citeseq, lambda a, r: MCD.setup_anndata(a, protein_obsm_key="adt"), KeyError, r"adt"),
    ("MCD empty object", lambda: channels()[:0].copy(), lambda a, r: MCD.setup_anndata(a), ValueError, r"(?i)no cells|empty"),
    ("MCD not an AnnData", lambda: np.zeros((3, 3)), lambda a, r: MCD.setup_anndata(a), TypeError, r"AnnData"),
    ("MCD channels inf", lambda: _with_inf(channels()), lambda a, r: MCD.setup_anndata(a), ValueError, r"inf"),
    ("MCD channels duplicate names", lambda: _dup_names(channels()), lambda a, r: MCD.setup_anndata(a), ValueError, r"(?i)duplicate|unique"),
    ("SpaDiT NaN counts", lambda: _with_nan(spatial_pair()[0]), lambda a, r: SpaDiT.setup_anndata(a, reference=spatial_pair()[1]), ValueError, r"NaN"),
    ("SpaDiT negative counts", lambda: _negative(spatial_pair()[0]), lambda a, r: SpaDiT.setup_anndata(a, reference=spatial_pair()[1]), ValueError, r"negative"),
    ("SpaDiT no gene shared with the reference", lambda: _suffix(spatial_pair()[0], "_sp"), lambda a, r: SpaDiT.setup_anndata(a, reference=spatial_pair()[1]), ValueError, r"(?i)shar|common"),
    ("SpaDiT duplicate gene names", lambda: _dup_names(spatial_pair()[0]), lambda a, r: SpaDiT.setup_anndata(a, reference=spatial_pair()[1]), ValueError, r"(?i)duplicate|unique"),
    ("Modality unknown modality", mudata, lambda m, r: MultiConditionDiffusion.setup_mudata(m, modalities=["rna", "atac"]), KeyError, r"atac"),
    ("Modality not a MuData", channels, lambda m, r: MultiConditionDiffusion.setup_mudata(m, modalities=["rna", "prot"]), TypeError, r"MuData"),
    # an object never set up: the same error for every model
    ("MCD never set up", channels, lambda a, r: MCD(a), ValueError, r"not set up for MCD"),
    ("SpaDiT never set up", lambda: spatial_pair()[0], lambda a, r: SpaDiT(a), ValueError, r"not set up for SpaDiT"),
    ("MultiCond never set up", mudata, lambda m, r: MultiConditionDiffusion(m), ValueError, r"not set up for MultiConditionDiffusion"),
    ("GeneFlow never set up", lambda: histology()[0], lambda s, r: GeneFlow(s), ValueError, r"not set up for GeneFlow"),
    ("GeneFlow NaN counts", lambda: _sd_counts(np.nan), lambda s, r: GeneFlow.setup_spatialdata(s, image_key="dapi"), ValueError, r"NaN"),
    ("GeneFlow negative counts", lambda: _sd_counts(-1.0), lambda s, r: GeneFlow.setup_spatialdata(s, image_key="dapi"), ValueError, r"negative"),
    ("GeneFlow no such image", lambda: histology()[0], lambda s, r: GeneFlow.setup_spatialdata(s, image_key="he"), KeyError, r"he"),
    ("GeneFlow not a SpatialData", lambda: histology()[0].tables["table"], lambda a, r: GeneFlow.setup_spatialdata(a, image_key="dapi"), TypeError, r"SpatialData"),
    ("GeneFlow tile leaves the image", lambda: histology()[0], lambda s, r: GeneFlow.setup_spatialdata(s, image_key="dapi", tile_size=0), ValueError, r"tile_size"),
    ("StainDiffuser not a SpatialData", lambda: citeseq(), lambda a, r: StainDiffuser.setup_spatialdata(a), TypeError, r"SpatialData"),
    ("StainDiffuser never set up", lambda: staining()[0], lambda s, r: StainDiffuser(s), ValueError, r"not set up for StainDiffuser"),
    ("StainDiffuser float H&E", lambda: _float_he(staining()[0]), lambda s, r: StainDiffuser.setup_spatialdata(s), ValueError, r"'he'.*uint8"),
    ("StainDiffuser source is target", lambda: staining()[0], lambda s, r: StainDiffuser.setup_spatialdata(s, source_key="mihc"), ValueError, r"two image elements"),
    ("StainDiffuser unknown stain", lambda: staining()[0], lambda s, r: StainDiffuser.setup_spatialdata(s, stains=["A", "CD3"]), KeyError, r"CD3"),
    ("StainDiffuser NaN tile origin", lambda: _tile_origin(staining()[0], np.nan), lambda s, r: StainDiffuser.setup_spatialdata(s), ValueError, r"finite integers"),
    ("StainDiffuser tile leaves the image", lambda: _tile_origin(staining()[0], 250), lambda s, r: StainDiffuser.setup_spatialdata(s), ValueError, r"outside"),
    ("StainDiffuser bad threshold", lambda: staining()[0], lambda s, r: StainDiffuser.setup_spatialdata(s, threshold="li"), ValueError, r"threshold"),
    ("StainDiffuser unknown objective", lambda: _set_up_stain(staining()[0]), lambda s, r: StainDiffuser(s, objective="gan"), ValueError, r"objective"),
    ("StainDiffuser negative seg_weight", lambda: _set_up_stain(staining()[0]), lambda s, r: StainDiffuser(s, seg_weight=-1), ValueError, r"seg_weight"),
    ("StainDiffuser crop larger than tiles", lambda: _set_up_stain(staining()[0]), lambda s, r: StainDiffuser(s, crop_size=64, channel_mult=(1, 2)), ValueError, r"larger than the tiles"),
    ("Coherent never set up", mudata, lambda m, r: CoherentDenoising(m), ValueError, r"not set up for CoherentDenoising"),
    # queries against trained models
    ("MCD query shares no channel", lambda: _suffix(channels()), lambda a, r: _fx("mcd_channels")(r).impute(a), ValueError, r"(?i)no .*name|shares no|_PROT"),
    ("MCD query shares no gene", lambda: _suffix(citeseq(), "_x"), lambda a, r: _fx("mcd_genes")(r).impute(a), ValueError, r"(?i)gene|shares no"),
    ("MCD query NaN counts", lambda: _with_nan(citeseq()), lambda a, r: _fx("mcd_genes")(r).impute(a), ValueError, r"NaN"),
    ("MCD query duplicate names", lambda: _dup_names(channels()), lambda a, r: _fx("mcd_channels")(r).impute(a), ValueError, r"(?i)duplicate|unique"),
    ("MCD key exists", lambda: _obsm(channels(), "MCD_imputed"), lambda a, r: _fx("mcd_channels")(r).impute(a, missing=["CD8"]), KeyError, r"MCD_imputed.*overwrite"),
    ("MCD bad indices", channels, lambda a, r: _fx("mcd_channels")(r).impute(a, indices=[0, 99]), IndexError, r"range"),
    ("MCD zero samples", channels, lambda a, r: _fx("mcd_channels")(r).impute(a, missing=["CD8"], n_samples=0), ValueError, r"n_samples"),
    ("SpaDiT query shares no gene", lambda: _suffix(spatial_pair()[0], "_sp"), lambda a, r: _fx("spadit")(r).predict(a), ValueError, r"(?i)shares no|no gene"),
    ("SpaDiT unknown genes", lambda: spatial_pair()[0], lambda a, r: _fx("spadit")(r).predict(a, genes=["nope"]), ValueError, r"nope"),
    ("SpaDiT key exists", lambda: _obsm(spatial_pair()[0], "SpaDiT_predicted"), lambda a, r: _fx("spadit")(r).predict(a), KeyError, r"SpaDiT_predicted.*overwrite"),
    ("Modality query shares no feature", lambda: _rename_mod(mudata(), "prot"), lambda m, r: _fx("multicond")(r).synthesize(m, target="rna", patients="all"), ValueError, r"prot"),
    ("StainDiffuser query not a SpatialData", citeseq, lambda a, r: _fx("staindiffuser")(r).predict(a), TypeError, r"SpatialData"),
    ("StainDiffuser query lacks H&E channels", lambda: _rename_channels(staining()[0], "he", ["X", "Y", "Z"]), lambda s, r: _fx("staindiffuser")(r).predict(s), ValueError, r"source channel"),
    ("StainDiffuser query zero steps", lambda: staining()[0], lambda s, r: _fx("staindiffuser")(r).predict(s, steps=0), ValueError, r"steps"),
    ("StainDiffuser query bad overlap", lambda: staining()[0], lambda s, r: _fx("staindiffuser")(r).predict(s, overlap=-0.5), ValueError, r"overlap"),
    ("StainDiffuser query no such labels", lambda: staining()[0], lambda s, r: _fx("staindiffuser")(r).predict(s, labels_key="nuclei"), KeyError, r"nuclei"),
    ("StainDiffuser query bad tile row", lambda: staining()[0], lambda s, r: _fx("staindiffuser")(r).predict(s, indices=[99]), IndexError, r"range"),
    ("Modality unknown target", mudata, lambda m, r: _fx("multicond")(r).synthesize(m, target="atac"), ValueError, r"atac"),
    ("Modality key exists", lambda: _with_mod(mudata(), "prot_MultiConditionDiffusion"), lambda m, r: _fx("multicond")(r).synthesize(m, target="prot", patients="all"), KeyError, r"prot_MultiConditionDiffusion.*overwrite"),
    # counts, fractions, seeds and devices: refused, never rounded or taken as another value
    ("Train fractional batch_size", lambda: _set_up_mcd(channels()), lambda a, r: _tiny_mcd(a).train(batch_size=2.5, **QUIET), ValueError, r"batch_size must be a positive integer, got 2.5"),
    ("Train zero max_epochs", lambda: _set_up_mcd(channels()), lambda a, r: _tiny_mcd(a).train(max_epochs=0, **QUIET), ValueError, r"max_epochs must be a positive integer"),
    ("Train negative patience", lambda: _set_up_mcd(channels()), lambda a, r: _tiny_mcd(a).train(max_epochs=1, early_stopping_patience=-5, **QUIET), ValueError, r"early_stopping_patience"),
    ("Train train_size as text", lambda: _set_up_mcd(channels()), lambda a, r: _tiny_mcd(a).train(max_epochs=1, train_size="0.5", **QUIET), ValueError, r"train_size must be a finite number"),
    ("MCD variance onto the mean", channels, lambda a, r: _fx("mcd_channels")(r).impute(a, missing=["CD8"], key_added="m", variance_key_added="m"), ValueError, r"both 'm'"),
    ("MCD not a device", channels, lambda a, r: _fx("mcd_channels")(r).impute(a, missing=["CD8"], device="gpu"), ValueError, r"device must be"),
    ("MCD fractional seed", channels, lambda a, r: _fx("mcd_channels")(r).impute(a, missing=["CD8"], seed=2.7), ValueError, r"seed must be an integer"),
    ("MCD zero steps counted", channels, lambda a, r: _fx("mcd_channels")(r).network_evaluations(steps=0), ValueError, r"steps must be a positive integer"),
    ("Coherent negative max_retries", lambda: _set_up_md(mudata(), CoherentDenoising), lambda m, r: CoherentDenoising(m, max_retries=-1), ValueError, r"max_retries must be an integer >= 0"),
    ("Coherent max_incoherent_fraction above 1", lambda: _set_up_md(mudata(), CoherentDenoising), lambda m, r: CoherentDenoising(m, max_incoherent_fraction=2.0), ValueError, r"max_incoherent_fraction"),
    ("Coherent NaN threshold", lambda: _set_up_md(mudata(), CoherentDenoising), lambda m, r: CoherentDenoising(m, threshold=float("nan")), ValueError, r"threshold must be a finite number"),
    ("MultiCond observed_fraction above 1", lambda: _set_up_md(mudata(), MultiConditionDiffusion), lambda m, r: MultiConditionDiffusion(m, observed_fraction=1.7), ValueError, r"observed_fraction"),
    ("Modality fractional batch_size", mudata, lambda m, r: _fx("multicond")(r).synthesize(m, target="prot", patients="all", batch_size=2.5), ValueError, r"batch_size must be a positive integer"),
    ("StainDiffuser zero batch_size", lambda: staining()[0], lambda s, r: _fx("staindiffuser")(r).predict(s, batch_size=0), ValueError, r"batch_size must be a positive integer"),
    ("StainDiffuser repeated training tiles", lambda: _set_up_stain(staining()[0]), lambda s, r: StainDiffuser(s, crop_size=16, model_channels=8, channel_mult=(1, 2)).train(tiles=[0, 0, 1, 2], max_epochs=1, **QUIET), ValueError, r"more than once"),
    ("MCD channel missing twice", channels, lambda a, r: _fx("mcd_channels")(r).impute(a, missing=["CD8", "CD8"]), ValueError, r"more than once.*CD8"),
    ("MCD image_key empty", lambda: staining()[0], lambda s, r: _fx("mcd_image")(r).impute(s, image_key="", missing=["B"]), KeyError, r"''"),
    ("GeneFlow fractional max_cells", lambda: histology()[0], lambda s, r: GeneFlow.setup_spatialdata(s, image_key="dapi", max_cells=2.5), ValueError, r"max_cells must be a positive integer"),
    ("MCD image downsample True", lambda: staining()[0], lambda s, r: MCD.setup_spatialdata(s, image_key="mihc", tile_size=32, downsample=True), ValueError, r"downsample must be a positive integer"),
    ("StainDiffuser fractional crop_size", lambda: _set_up_stain(staining()[0]), lambda s, r: StainDiffuser(s, crop_size=16.9), ValueError, r"crop_size must be a positive integer"),
    ("StainDiffuser overlap as text", lambda: staining()[0], lambda s, r: _fx("staindiffuser")(r).predict(s, overlap="0.5"), ValueError, r"overlap must be a finite number"),
    ("GeneFlow repeated training cells", lambda: _set_up_flow(histology()[0]), lambda s, r: GeneFlow(s, dim=8, rank=2, model_channels=8, channel_mult=(1,), encoder_layers=1).train(cells=[0, 0, 1], max_epochs=1, **QUIET), ValueError, r"more than once"),
]


def _set_up_mcd(a: AnnData) -> AnnData:
    MCD.setup_anndata(a)
    return a


def _tiny_mcd(a: AnnData) -> MCD:
    return MCD(a, model_channels=8, channel_mult=(1,), heads=1)


def _set_up_md(md: MuData, cls: type) -> MuData:
    cls.setup_mudata(md, modalities=["rna", "prot"])
    return md


def _set_up_flow(s):
    GeneFlow.setup_spatialdata(s, image_key="dapi", tile_size=16)
    return s


def _sd_counts(value: float):
    s = histology()[0]
    s.tables["table"].X[3, 2] = value
    return s


def _float_he(s):
    from spatialdata.models import Image2DModel

    s.images["he"] = Image2DModel.parse(np.asarray(s.images["he"].values, dtype=np.float32) / 255, dims=("c", "y", "x"),
                                        c_coords=["R", "G", "B"])
    return s


def _rename_channels(s, key: str, names: list[str]):
    from spatialdata.models import Image2DModel

    s.images[key] = Image2DModel.parse(np.asarray(s.images[key].values), dims=("c", "y", "x"), c_coords=names)
    return s


def _tile_origin(s, value: float):
    s.tables["tiles"].obs.loc["t3", "y0"] = value
    return s


def _set_up_stain(s):
    StainDiffuser.setup_spatialdata(s)
    return s


def _obsm(a: AnnData, key: str) -> AnnData:
    a.obsm[key] = np.zeros((a.n_obs, 1))
    return a


def _rename_mod(md: MuData, mod: str) -> MuData:
    md.mod[mod].var_names = [f"{v}_x" for v in md.mod[mod].var_names]
    md.update()
    return md


def _with_mod(md: MuData, key: str) -> MuData:
    x = AnnData(np.zeros((md.n_obs, 1), dtype=np.float32))
    x.obs_names = md.obs_names
    md.mod[key] = x
    md.update()
    return md


@pytest.mark.parametrize("name,make,call,error,match", CASES, ids=[c[0] for c in CASES])
def test_bad_input_clear_error_and_object_unchanged(name, make, call, error, match, request) -> None:
    obj = make()
    before = snapshot(obj) if isinstance(obj, (AnnData, MuData)) or hasattr(obj, "tables") else None
    with pytest.raises(error, match=match):
        call(obj, request)
    if before is not None:
        assert_same(snapshot(obj), before)


# --- training faults ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: (_setup(MCD, channels()), dict(model_channels=8, channel_mult=(1,), heads=1)),
        lambda: (_setup_sp(), dict(dim=16, depth=1, heads=2, ref_heads=1, bank_size=16)),
        lambda: (_setup_md(MultiConditionDiffusion), dict(latent_dim=3, hidden=16, layers=1, emb_dim=8)),
    ],
    ids=["MCD", "SpaDiT", "MultiConditionDiffusion"],
)
def test_diverged_training_stops_with_a_clear_error(build) -> None:
    (cls, obj, extra), hyper = build()
    model = cls(obj, **extra, **hyper)
    before = {k: v.detach().clone() for k, v in model.network.named_parameters()}
    with pytest.raises(TrainingDivergedError, match=r"(?s)epoch.*lr"):
        model.train(max_epochs=3, lr=1e30, **QUIET)
    assert not model.is_trained
    for k, v in model.network.named_parameters():  # weights back as before the call
        assert np.array_equal(v.detach().numpy(), before[k].numpy()), k


def _setup(cls, a):
    cls.setup_anndata(a)
    return cls, a, {}


def _setup_sp():
    sp, ref = spatial_pair()
    SpaDiT.setup_anndata(sp, reference=ref)
    return SpaDiT, sp, {"reference": ref}


def _setup_md(cls, **kw):
    md = mudata(**kw)
    cls.setup_mudata(md, modalities=["rna", "prot"])
    return cls, md, {}


def test_coherent_needs_patients_with_two_modalities() -> None:
    md = mudata(overlap=False)  # no patient has both modalities
    CoherentDenoising.setup_mudata(md, modalities=["rna", "prot"])
    model = CoherentDenoising(md, latent_dim=3, hidden=16, layers=1, emb_dim=8)
    before = snapshot(md)
    with pytest.raises(ValueError, match=r"(?i)rna.*prot|prot.*rna"):
        model.train(max_epochs=2, **QUIET)
    assert not model.is_trained
    assert_same(snapshot(md), before)


def test_mcd_without_condition_genes() -> None:
    a = citeseq()
    a = a[:, []].copy()  # no gene at all
    before = snapshot(a)
    with pytest.raises(ValueError, match=r"(?i)gene|X is empty"):
        MCD.setup_anndata(a, protein_obsm_key="protein")
        MCD(a)
    assert_same(snapshot(a), before)


# --- damaged saved models -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "damage,match",
    [
        (lambda p: (p / "model.json").write_text("{not json"), "not valid JSON"),
        (lambda p: (p / "model.json").write_text(json.dumps({"format_version": 99, "model": "MCD"})), "format"),
        (lambda p: (p / "model.json").write_text(json.dumps({**json.loads((p / "model.json").read_text()), "registry": None})), "registry"),
        (lambda p: (p / "model.json").write_text(json.dumps({**json.loads((p / "model.json").read_text()), "model": "SpaDiT"})), "SpaDiT"),
        (lambda p: (p / "model.pt").write_bytes(b"garbage"), "state dict"),
    ],
    ids=["bad json", "future format", "no registry", "other model", "bad weights"],
)
def test_damaged_saved_model_gives_a_clear_error(mcd_channels, tmp_path, damage, match) -> None:
    mcd_channels.save(tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(ValueError, match=match):
        MCD.load(tmp_path / "m")


# --- one draw writes a variance of 0: a warning, not silence -------------------------------------


@pytest.mark.parametrize(
    "fixture,make,call,where",
    [
        ("mcd_channels", channels, lambda m, a, **kw: m.impute(a, missing=["CD8"], steps=1, **kw), "'MCD_variance'"),
        ("mcd_image", lambda: staining()[0], lambda m, s, **kw: m.impute(s, missing=["B"], steps=1, **kw), "'mihc_MCD_variance'"),
        ("spadit", lambda: spatial_pair()[0], lambda m, a, **kw: m.predict(a, steps=1, **kw), "'SpaDiT_variance'"),
        ("multicond", mudata, lambda m, md, **kw: m.synthesize(md, target="prot", patients="all", steps=1, **kw), "layers\\['variance'\\]"),
    ],
    ids=["MCD table", "MCD image", "SpaDiT", "MultiConditionDiffusion"],
)
def test_one_draw_warns_that_the_variance_is_zero(request, fixture, make, call, where) -> None:
    model = request.getfixturevalue(fixture)
    with pytest.warns(UserWarning, match=rf"n_samples=1: the variance written to .*{where}.* is 0"):
        call(model, make(), n_samples=1)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="n_samples=1")
        call(model, make(), n_samples=2)
    if fixture != "multicond":  # no variance written: nothing to warn about
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message="n_samples=1")
            call(model, make(), n_samples=1, variance_key_added=False)
