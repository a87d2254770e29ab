"""Declarative fields: validate, register, read by name (backed too), transfer; one registry."""

from __future__ import annotations

import copy
import json
import warnings
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from biodiffuse.data import (
    FieldTransfer,
    ImageField,
    MatrixField,
    ModalityField,
    ObsmField,
    field_from_state,
    read_setup_record,
    write_setup_record,
)
from biodiffuse.data import fields as fields_module

md = pytest.importorskip("mudata")
sd = pytest.importorskip("spatialdata")
from spatialdata.models import Image2DModel, Image3DModel  # noqa: E402

GENES = [f"g{i}" for i in range(7)]


# --- helpers ------------------------------------------------------------------------------------
def _adata(sparse_x: bool = False, seed: int = 0, n: int = 23) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    counts = rng.poisson(2.0, (n, len(GENES))).astype(np.float32)
    adata = ad.AnnData(
        sparse.csr_matrix(counts) if sparse_x else counts,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=GENES),
    )
    adata.layers["counts"] = counts.copy()
    adata.obsm["protein"] = pd.DataFrame(rng.random((n, 3)), index=adata.obs_names, columns=["CD3", "CD4", "CD8"])
    adata.uns["note"] = "user data"
    return adata


def _dense(x) -> np.ndarray:
    return x.toarray() if sparse.issparse(x) else np.asarray(x)


def _snapshot(adata: ad.AnnData) -> dict:
    return {
        "X": _dense(adata.X).copy(),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "obsm": {k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        "layers": {k: _dense(v).copy() for k, v in adata.layers.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
    }


def _assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    np.testing.assert_array_equal(_dense(adata.X), snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert set(adata.obsm.keys()) == set(snap["obsm"])
    for k, v in snap["obsm"].items():
        np.testing.assert_array_equal(np.asarray(adata.obsm[k]), np.asarray(v))
    assert set(adata.layers.keys()) == set(snap["layers"])
    for k, v in snap["layers"].items():
        np.testing.assert_array_equal(_dense(adata.layers[k]), v)
    assert set(adata.uns.keys()) == set(snap["uns"])


def _raises_unchanged(adata, exc, match, fn, *args, **kwargs):
    snap = _snapshot(adata)
    with pytest.raises(exc, match=match):
        fn(*args, **kwargs)
    _assert_unchanged(adata, snap)


def _mudata(seed: int = 0) -> md.MuData:
    rng = np.random.default_rng(seed)
    rna = ad.AnnData(rng.random((10, 4)), obs=pd.DataFrame(index=[f"p{i}" for i in range(10)]),
                     var=pd.DataFrame(index=["A", "B", "C", "D"]))
    prot = ad.AnnData(rng.random((6, 2)), obs=pd.DataFrame(index=[f"p{i}" for i in range(4, 10)]),
                      var=pd.DataFrame(index=["P1", "P2"]))
    with _quiet():
        return md.MuData({"rna": rna, "prot": prot})


@contextmanager
def _quiet():
    """MuData warns about its own var / obs updates; not what these tests are about."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _sdata(channels=("A", "B", "C"), seed: int = 0) -> sd.SpatialData:
    rng = np.random.default_rng(seed)
    image = rng.random((len(channels), 6, 5)).astype(np.float32)
    return sd.SpatialData(images={"img": Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=list(channels))})


# --- MatrixField --------------------------------------------------------------------------------
@pytest.mark.parametrize("sparse_x", [False, True])
def test_matrix_register_and_read_by_name(sparse_x):
    adata = _adata(sparse_x)
    field = MatrixField(nonnegative=True)
    state = field.register(adata)
    assert state["names"] == GENES and state["key"] == "adata.X" and state["n_obs"] == adata.n_obs
    assert state["dtype"] == "f"
    assert field_from_state(json.loads(json.dumps(state))) == field
    # a query with permuted columns gives the same values by name
    query = adata[:, GENES[::-1]].copy()
    want = ["g4", "g0", "g6"]
    np.testing.assert_array_equal(field.read(query, want), field.read(adata, want))
    np.testing.assert_array_equal(field.read(adata, want), _dense(adata.X)[:, [4, 0, 6]])
    rows = np.array([5, 0, 5, 22])
    np.testing.assert_array_equal(field.read(query, want, rows=rows), _dense(adata.X)[rows][:, [4, 0, 6]])
    np.testing.assert_array_equal(MatrixField("counts").read(adata, want), adata.layers["counts"][:, [4, 0, 6]])


def test_rows_as_mask_negative_and_out_of_range():
    adata = _adata()
    field, x = MatrixField(), _dense(adata.X)
    mask = np.zeros(adata.n_obs, bool)
    mask[[1, 4]] = True
    np.testing.assert_array_equal(field.read(adata, ["g1"], rows=mask)[:, 0], x[[1, 4], 1])
    np.testing.assert_array_equal(field.read(adata, ["g1"], rows=[-1])[:, 0], x[[-1], 1])
    np.testing.assert_array_equal(field.read(adata, ["g1"], rows=slice(2, 5))[:, 0], x[2:5, 1])
    with pytest.raises(IndexError, match="out of range"):
        field.read(adata, ["g1"], rows=[adata.n_obs])
    with pytest.raises(ValueError, match="boolean mask must have length"):
        field.read(adata, ["g1"], rows=mask[:-1])


def test_matrix_missing_names_error_or_nan():
    adata = _adata()
    query = adata[:, ["g2", "g0"]].copy()
    field = MatrixField()
    _raises_unchanged(query, ValueError, r"missing from adata\.X.*g1", field.read, query, ["g0", "g1"])
    out = field.read(query, ["g0", "g1", "g2"], missing="nan")
    np.testing.assert_array_equal(out[:, 0], _dense(adata.X)[:, 0])
    assert np.isnan(out[:, 1]).all()
    np.testing.assert_array_equal(out[:, 2], _dense(adata.X)[:, 2])
    t = field.transfer(query, GENES)
    assert isinstance(t, FieldTransfer)
    assert t.present == ("g0", "g2") and t.absent == tuple(g for g in GENES if g not in ("g0", "g2"))
    assert t.extra == () and t.mask.tolist() == [g in ("g0", "g2") for g in GENES] and not t.complete


def test_matrix_transfer_zero_shared_names_hints_suffix():
    adata = _adata()
    query = adata.copy()
    query.var_names = [f"{g}_PROT" for g in GENES]
    _raises_unchanged(query, ValueError, r"(?s)MatrixField.*shares no name.*g0.*g0_PROT.*'_PROT'", MatrixField().transfer, query, GENES)
    query.var_names = [f"rna:{g}" for g in GENES]
    with pytest.raises(ValueError, match=r"start with 'rna:'"):
        MatrixField().transfer(query, GENES)
    # a suffix explaining most names wins over a longer common one ('3_PROT' here)
    with pytest.raises(ValueError, match=r"end with '_PROT'"):
        MatrixField().transfer(ad.AnnData(np.ones((2, 2)), var=pd.DataFrame(index=["CD3_PROT", "CD33_PROT"])), ["CD3", "CD33"])
    with pytest.raises(ValueError, match="shares no name") as err:
        MatrixField().transfer(ad.AnnData(np.ones((2, 2)), var=pd.DataFrame(index=["x", "y"])), GENES)
    assert "rename" not in str(err.value)


def test_matrix_duplicate_names_clear_error():
    adata = _adata()
    adata.var_names = ["g0", "g1", "g1", "g3", "g3", "g5", "g6"]
    for call in (MatrixField().register, MatrixField().validate):
        _raises_unchanged(adata, ValueError, r"adata\.var_names.*duplicated.*g1.*var_names_make_unique", call, adata)
    _raises_unchanged(adata, ValueError, "var_names_make_unique", MatrixField().read, adata, ["g0"])
    _raises_unchanged(adata, ValueError, "var_names_make_unique", MatrixField().transfer, adata, ["g0"])


@pytest.mark.parametrize("sparse_x", [False, True])
@pytest.mark.parametrize(
    ("value", "kwargs", "match"),
    [
        (np.nan, {}, r"adata\.layers\['counts'\] contains 1 NaN"),
        (np.inf, {"allow_nan": True}, r"adata\.layers\['counts'\] contains inf"),
        (-1.0, {"nonnegative": True}, r"adata\.layers\['counts'\] contains negative"),
    ],
)
def test_matrix_bad_values_name_the_key(sparse_x, value, kwargs, match):
    adata = _adata()
    bad = adata.layers["counts"].copy()
    bad[3, 2] = value
    adata.layers["counts"] = sparse.csr_matrix(bad) if sparse_x else bad
    field = MatrixField("counts", **kwargs)
    _raises_unchanged(adata, ValueError, match, field.register, adata)
    _raises_unchanged(adata, ValueError, match, field.read, adata, ["g2"])
    field.read(adata, ["g1"])  # the bad value is not in the columns read
    field.read(adata, ["g2"], rows=[0, 1])  # nor in the rows read


def test_matrix_nan_allowed_and_negative_allowed():
    adata = _adata()
    adata.X[0, 0] = np.nan
    adata.X[1, 1] = -2.0
    out = MatrixField(allow_nan=True).read(adata, ["g0", "g1"])
    assert np.isnan(out[0, 0]) and out[1, 1] == -2.0


def test_matrix_type_empty_and_dtype_errors():
    adata = _adata()
    with pytest.raises(TypeError, match=r"MatrixField.*reads an AnnData, got dict"):
        MatrixField().register({"X": 1})
    with pytest.raises(TypeError, match="ModalityField"):
        MatrixField().register(_mudata())
    _raises_unchanged(adata, KeyError, "'raw' not in adata.layers", MatrixField("raw").register, adata)
    empty_obs = adata[:0].copy()
    with pytest.raises(ValueError, match=r"adata\.X is empty"):
        MatrixField().register(empty_obs)
    empty_var = adata[:, []].copy()
    with pytest.raises(ValueError, match=r"adata\.layers\['counts'\] is empty"):
        MatrixField("counts").register(empty_var)
    adata.layers["words"] = np.full(adata.shape, "a", dtype=object)
    _raises_unchanged(adata, ValueError, r"adata\.layers\['words'\] is not numeric", MatrixField("words").register, adata)
    _raises_unchanged(adata, ValueError, r"adata\.layers\['words'\] is not numeric", MatrixField("words").read, adata, ["g0"])
    adata.layers["flags"] = np.ones(adata.shape, dtype=bool)
    assert MatrixField("flags", nonnegative=True).register(adata)["dtype"] == "b"
    with pytest.raises(ValueError, match="missing must be one of"):
        MatrixField().read(adata, ["g0"], missing="zero")


@pytest.mark.parametrize("sparse_x", [False, True])
def test_backed_reads_like_in_memory_in_chunks(tmp_path, monkeypatch, sparse_x):
    adata = _adata(sparse_x, n=53)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        field = MatrixField(nonnegative=True)
        assert field.register(backed) == field.register(adata)
        monkeypatch.setattr(fields_module, "READ_CHUNK", 8)
        seen = []
        real = fields_module._read_matrix_rows

        def spy(x, rows, cols, dtype):
            seen.append((type(x).__name__, len(rows), len(cols)))
            return real(x, rows, cols, dtype)

        monkeypatch.setattr(fields_module, "_read_matrix_rows", spy)
        want = ["g5", "g1", "g3"]
        rows = np.array([50, 2, 9, 9, 30, 0])
        np.testing.assert_array_equal(field.read(backed, want), field.read(adata, want))
        np.testing.assert_array_equal(field.read(backed, want, rows=rows), field.read(adata, want, rows=rows))
        on_disk = [s for s in seen if s[0] not in ("ndarray", "csr_matrix")]
        assert on_disk and all(r <= 8 and c == 3 for _, r, c in on_disk)  # chunks, requested columns only
        blocks = list(field.iter_rows(backed, want, batch_size=20))
        assert [b[0] for b in blocks] == [slice(0, 20), slice(20, 40), slice(40, 53)]
        np.testing.assert_array_equal(np.concatenate([b[1] for b in blocks]), field.read(adata, want))
        t = field.transfer(backed, GENES[:3])
        assert t.complete
    finally:
        backed.file.close()


@pytest.mark.parametrize("sparse_x", [False, True])
def test_backed_bad_values_checked_by_chunks(tmp_path, monkeypatch, sparse_x):
    adata = _adata(sparse_x, n=30)
    x = _dense(adata.X)
    x[27, 4] = -1.0
    adata.X = sparse.csr_matrix(x) if sparse_x else x
    adata.write_h5ad(tmp_path / "b.h5ad")
    backed = ad.read_h5ad(tmp_path / "b.h5ad", backed="r")
    try:
        monkeypatch.setattr(fields_module, "READ_CHUNK", 8)
        with pytest.raises(ValueError, match=r"adata\.X contains negative"):
            MatrixField(nonnegative=True).validate(backed)
        with pytest.raises(ValueError, match=r"adata\.X contains negative"):
            MatrixField(nonnegative=True).read(backed, ["g4"])
        MatrixField(nonnegative=True).read(backed, ["g4"], rows=slice(0, 20))
    finally:
        backed.file.close()


# --- ObsmField ----------------------------------------------------------------------------------
def test_obsm_frame_and_array_by_name():
    adata = _adata()
    field = ObsmField("protein")
    state = field.register(adata)
    assert state["names"] == ["CD3", "CD4", "CD8"] and state["key"] == "adata.obsm['protein']"
    query = adata.copy()
    query.obsm["protein"] = adata.obsm["protein"][["CD8", "CD3", "CD4"]]
    np.testing.assert_array_equal(field.read(query, ["CD4", "CD8"]), adata.obsm["protein"][["CD4", "CD8"]].to_numpy(np.float32))
    # an array with names given or stored in uns
    arr = adata.obsm["protein"].to_numpy()
    query.obsm["protein"] = arr[:, [2, 0, 1]]
    with pytest.raises(ValueError, match=r"adata\.obsm\['protein'\] is an array without column names"):
        field.read(query, ["CD4"])
    np.testing.assert_array_equal(ObsmField("protein", names=["CD8", "CD3", "CD4"]).read(query, ["CD4"])[:, 0], arr[:, 1].astype(np.float32))
    query.uns["protein_names"] = np.array(["CD8", "CD3", "CD4"])
    np.testing.assert_array_equal(field.read(query, ["CD4"])[:, 0], arr[:, 1].astype(np.float32))
    with pytest.raises(ValueError, match="3 columns but 2 names"):
        ObsmField("protein", names=["a", "b"]).register(query)
    out = field.read(query, ["CD4", "CD99"], missing="nan")
    assert np.isnan(out[:, 1]).all()
    _raises_unchanged(adata, KeyError, "'rna' not in adata.obsm", ObsmField("rna").register, adata)


def test_obsm_errors_name_the_key_and_leave_object_unchanged():
    adata = _adata()
    frame = adata.obsm["protein"].copy()
    adata.obsm["protein"] = frame.set_axis(["CD3", "CD3", "CD8"], axis=1)
    _raises_unchanged(adata, ValueError, r"adata\.obsm\['protein'\] columns.*duplicated.*CD3", ObsmField("protein").register, adata)
    adata.obsm["protein"] = frame.assign(CD4=["x"] * adata.n_obs)
    _raises_unchanged(adata, ValueError, r"adata\.obsm\['protein'\] has non-numeric column.*CD4", ObsmField("protein").register, adata)
    bad = frame.copy()
    bad.iloc[2, 1] = np.nan
    adata.obsm["protein"] = bad
    ObsmField("protein").register(adata)  # NaN allowed by default (unmeasured proteins)
    _raises_unchanged(adata, ValueError, r"adata\.obsm\['protein'\] contains 1 NaN", ObsmField("protein", allow_nan=False).register, adata)
    bad.iloc[2, 1] = np.inf
    _raises_unchanged(adata, ValueError, r"adata\.obsm\['protein'\] contains inf", ObsmField("protein").register, adata)
    bad.iloc[2, 1] = -3.0
    _raises_unchanged(adata, ValueError, r"adata\.obsm\['protein'\] contains negative", ObsmField("protein", nonnegative=True).read, adata, ["CD4"])
    adata.obsm["protein"] = frame.iloc[:, :0]
    _raises_unchanged(adata, ValueError, r"adata\.obsm\['protein'\] is empty", ObsmField("protein").register, adata)
    adata.obsm["protein"] = frame.set_axis(["CD3_PROT", "CD4_PROT", "CD8_PROT"], axis=1)
    _raises_unchanged(adata, ValueError, r"(?s)ObsmField.*shares no name.*'_PROT'", ObsmField("protein").transfer, adata, ["CD3", "CD4", "CD8"])


def test_obsm_on_mudata():
    mdata = _mudata()
    mdata.obsm["lat"] = pd.DataFrame(np.arange(20.0).reshape(10, 2), index=mdata.obs_names, columns=["z0", "z1"])
    assert ObsmField("lat").register(mdata)["key"] == "mdata.obsm['lat']"
    np.testing.assert_array_equal(ObsmField("lat").read(mdata, ["z1"])[:, 0], np.arange(1.0, 20.0, 2))


# --- ModalityField ------------------------------------------------------------------------------
def test_modality_register_read_presence_and_transfer():
    mdata = _mudata()
    field = ModalityField("prot")
    state = field.register(mdata)
    assert state["names"] == ["P1", "P2"] and state["n_obs"] == mdata.n_obs and state["key"] == "mdata.mod['prot']"
    out = field.read(mdata, ["P2", "P1"])
    present = field.present(mdata)
    assert present.tolist() == [name in mdata.mod["prot"].obs_names for name in mdata.obs_names]
    assert np.isnan(out[~present]).all() and np.isfinite(out[present]).all()
    rows = pd.Index(mdata.obs_names).get_indexer(mdata.mod["prot"].obs_names)
    np.testing.assert_allclose(out[rows], mdata.mod["prot"].X[:, [1, 0]].astype(np.float32))
    # permuted features in the query
    with _quiet():
        query = md.MuData({"rna": mdata.mod["rna"].copy(), "prot": mdata.mod["prot"][:, ["P2", "P1"]].copy()})
    np.testing.assert_array_equal(field.read(query, ["P1", "P2"]), field.read(mdata, ["P1", "P2"]))
    # missing names and modality
    with pytest.raises(ValueError, match=r"missing from mdata\.mod\['prot'\]"):
        field.read(mdata, ["P1", "P3"])
    assert np.isnan(field.read(mdata, ["P3"], missing="nan")).all()
    with _quiet():
        no_prot = md.MuData({"rna": mdata.mod["rna"].copy()})
    with pytest.raises(KeyError, match="modality 'prot' not in mdata.mod"):
        field.read(no_prot, ["P1"])
    assert np.isnan(field.read(no_prot, ["P1"], missing="nan")).all() and not field.present(no_prot).any()
    assert field.transfer(query, ["P1", "P2", "P9"]).absent == ("P9",)
    with pytest.raises(ValueError, match=r"(?s)ModalityField.*shares no name.*end with '_PROT'"):
        field.transfer(query, ["P1_PROT", "P2_PROT"])


def test_modality_errors_name_the_key():
    mdata = _mudata()
    with pytest.raises(TypeError, match=r"ModalityField.*reads a MuData, got AnnData"):
        ModalityField("rna").register(mdata.mod["rna"])
    mdata.mod["rna"].var_names = ["A", "A", "C", "D"]
    with pytest.raises(ValueError, match=r"mdata\.mod\['rna'\]\.var_names.*duplicated.*'A'.*var_names_make_unique"):
        ModalityField("rna").register(mdata)
    mdata = _mudata()
    mdata.mod["rna"].X[4, 1] = np.nan
    snap = mdata.mod["rna"].X.copy()
    with pytest.raises(ValueError, match=r"mdata\.mod\['rna'\] contains 1 NaN"):
        ModalityField("rna").register(mdata)
    with pytest.raises(ValueError, match=r"mdata\.mod\['rna'\] contains 1 NaN"):
        ModalityField("rna").read(mdata, ["B"])
    ModalityField("rna").read(mdata, ["A"])
    np.testing.assert_array_equal(mdata.mod["rna"].X, snap)
    mdata.mod["rna"].X[4, 1] = -1.0
    with pytest.raises(ValueError, match=r"mdata\.mod\['rna'\] contains negative"):
        ModalityField("rna", nonnegative=True).register(mdata)
    with pytest.raises(KeyError, match=r"layer 'z' not in mdata\.mod\['rna'\]\.layers"):
        ModalityField("rna", layer="z").register(mdata)


# --- ImageField ---------------------------------------------------------------------------------
def test_image_register_read_by_name():
    sdata = _sdata()
    field = ImageField("img")
    state = field.register(sdata)
    assert state["names"] == ["A", "B", "C"] and state["shape"] == [3, 6, 5] and state["key"] == "sdata.images['img']"
    assert field_from_state(json.loads(json.dumps(state))) == field
    raw = np.asarray(sdata.images["img"].values)
    query = _sdata(("C", "A", "B"))
    query.images["img"] = Image2DModel.parse(raw[[2, 0, 1]], dims=("c", "y", "x"), c_coords=["C", "A", "B"])
    np.testing.assert_array_equal(field.read(query, ["B", "C"]), field.read(sdata, ["B", "C"]))
    np.testing.assert_array_equal(field.read(sdata, ["B", "C"]), raw[[1, 2]])
    np.testing.assert_array_equal(field.read(sdata, ["A"], rows=[4, 1]), raw[[0]][:, [4, 1]])
    with pytest.raises(ValueError, match=r"missing from sdata\.images\['img'\]"):
        field.read(sdata, ["A", "D"])
    out = field.read(sdata, ["A", "D"], missing="nan")
    assert np.isnan(out[1]).all() and np.array_equal(out[0], raw[0])
    bands = list(field.iter_rows(sdata, ["C"], batch_size=4))
    assert [b[0] for b in bands] == [slice(0, 4), slice(4, 6)]
    np.testing.assert_array_equal(np.concatenate([b[1] for b in bands], axis=1), raw[[2]])
    assert field.transfer(query, ["A", "Z"]).present == ("A",)


def test_image_errors_name_the_key():
    sdata = _sdata()
    with pytest.raises(TypeError, match=r"ImageField.*reads a SpatialData, got AnnData"):
        ImageField("img").register(_adata())
    with pytest.raises(KeyError, match="'nope' is not an image element"):
        ImageField("nope").register(sdata)
    dup = _sdata(("A", "B", "A"))
    with pytest.raises(ValueError, match=r"images\['img'\] has 1 duplicated channel name.*'A'"):
        ImageField("img").register(dup)
    with pytest.raises(ValueError, match=r"images\['img'\] has 1 duplicated channel name"):
        ImageField("img").read(dup, ["A"])
    vol = sd.SpatialData(images={"vol": Image3DModel.parse(np.zeros((2, 3, 4, 4)), dims=("c", "z", "y", "x"), c_coords=["A", "B"])})
    with pytest.raises(ValueError, match=r"images\['vol'\] has dims \('c', 'z', 'y', 'x'\)"):
        ImageField("vol").register(vol)
    raw = np.asarray(sdata.images["img"].values).copy()
    raw[1, 2, 3] = np.nan
    bad = sd.SpatialData(images={"img": Image2DModel.parse(raw, dims=("c", "y", "x"), c_coords=["A", "B", "C"])})
    with pytest.raises(ValueError, match=r"images\['img'\] channel 'B' holds NaN"):
        ImageField("img").register(bad)
    ImageField("img").read(bad, ["A", "C"])
    q = _sdata(("A_PROT", "B_PROT"))
    with pytest.raises(ValueError, match=r"(?s)ImageField.*shares no name.*'_PROT'"):
        ImageField("img").transfer(q, ["A", "B", "C"])
    assert set(bad.attrs) == set() and set(q.images) == {"img"}


def test_mcd_image_helpers_are_the_moved_ones():
    from biodiffuse.data import spatialdata as sdmod
    from biodiffuse.models import _mcd_image as img

    for name in ("is_spatialdata", "image_element", "image_channels", "image_array", "write_image_setup", "read_image_setup", "SDATA_ATTRS_KEY"):
        assert getattr(img, name) is getattr(sdmod, name)
    with pytest.raises(ValueError, match="duplicated channel name"):
        img.image_array(_sdata(("A", "A")), "img", ["A"])


# --- one registry -------------------------------------------------------------------------------
def test_setup_record_on_anndata_mudata_spatialdata(tmp_path):
    adata = _adata()
    write_setup_record(adata, "MCD", {"layer": "counts", "x": None, "n": 3})
    assert set(adata.uns.keys()) == {"note", "biodiffuse"}
    assert read_setup_record(adata, "MCD") == {"layer": "counts", "n": 3}
    assert read_setup_record(adata, "Other") is None
    adata.write_h5ad(tmp_path / "r.h5ad")
    back = ad.read_h5ad(tmp_path / "r.h5ad")
    assert read_setup_record(back, "MCD") == {"layer": "counts", "n": 3}
    assert type(read_setup_record(back, "MCD")["n"]) is int
    back.uns["biodiffuse"] = {"MCD": {"n": np.array(3), "names": np.array(["a", "b"])}}  # as older h5ad gives
    rec = read_setup_record(back, "MCD")
    assert type(rec["n"]) is int and rec["names"].tolist() == ["a", "b"]
    mdata = _mudata()
    write_setup_record(mdata, "MultiConditionDiffusion", {"modalities": ["rna", "prot"]})
    assert list(mdata.uns.keys()) == ["biodiffuse"] and not mdata.mod["rna"].uns
    assert read_setup_record(mdata, "MultiConditionDiffusion") == {"modalities": ["rna", "prot"]}
    sdata = _sdata()
    write_setup_record(sdata, "MCD", {"image_key": "img", "labels_key": None})
    write_setup_record(sdata, "GeneFlow", {"image_key": "img"})
    assert set(sdata.attrs) == {"biodiffuse"} and set(sdata.attrs["biodiffuse"]) == {"MCD", "GeneFlow"}
    from biodiffuse.data.spatialdata import read_image_setup, write_image_setup

    assert read_image_setup(sdata, "MCD") == read_setup_record(sdata, "MCD") == {"image_key": "img"}
    write_image_setup(sdata, "MCD", {"image_key": "other"})
    assert read_setup_record(sdata, "MCD") == {"image_key": "other"}
    with pytest.raises(TypeError, match="AnnData, MuData or SpatialData, got dict"):
        write_setup_record({}, "MCD", {})
    with pytest.raises(TypeError, match="got list"):
        read_setup_record([], "MCD")
