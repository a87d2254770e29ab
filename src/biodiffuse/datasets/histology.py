"""Expression + histology image pairs as SpatialData: Xenium bone marrow (DAPI) and HER2ST (H&E).

Both loaders read plain files only (HDF5 through h5py, parquet through pyarrow, TSV through
pandas, PNG / JPEG through Pillow); nothing in the files is executed. The data folders are
looked for as the other loaders do (:mod:`biodiffuse.datasets._locate`):
``$BIODIFFUSE_DATA_DIR/spatial/<name>``, then ``../shared/data/spatial/<name>``; ``path=``
reads any folder in the same layout.

Coordinates
-----------
Every returned object keeps one convention: the table's ``obsm["spatial"]`` holds ``(x, y)``
centroids in the **pixel coordinates of the returned image element** (``x`` = column index,
``y`` = row index, pixel ``(r, c)`` centred on ``(x, y) = (c, r)``), so that
``image[:, round(y), round(x)]`` is the pixel under a cell. With ``crop=`` the image is cut and
the coordinates are shifted by the crop's corner; the elements then carry a translation to the
``global`` coordinate system, which stays in full-image pixels, and ``uns["crop"]`` records the
box. A second coordinate system ``"micrometres"`` scales pixels by the pixel size.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ._locate import locate_dir

__all__ = [
    "xenium_bone_marrow",
    "her2st",
    "HER2ST_SECTIONS",
    "XENIUM_BONE_MARROW_FILES",
    "XENIUM_PIXEL_SIZE_UM",
    "ST_SPOT_DIAMETER_UM",
    "ST_SPOT_SPACING_UM",
]

_XENIUM = "xenium_bone_marrow"
_HER2ST = "her2st"
XENIUM_BONE_MARROW_FILES = ("cell_feature_matrix.h5", "cell_metadata.parquet", "cluster.parquet", "dapi_level15_stitched.png")
XENIUM_PIXEL_SIZE_UM = 0.2125
"""Micrometres per pixel of the Xenium morphology (DAPI) image at full resolution. The stitched
image is pyramid level 15 of ``dapi.dzi`` (``max_pyramid_zoom`` 15, 2**15 >= 24,134), i.e. the
full resolution, and the cell centroids of ``cell_metadata.parquet`` are in its pixels."""
HER2ST_SECTIONS = ("C2", "C3", "C4", "C5", "C6")
ST_SPOT_DIAMETER_UM = 100.0
ST_SPOT_SPACING_UM = 200.0
"""Centre-to-centre distance of neighbouring spots of the ST array (Stahl et al. 2016); one unit
of the array coordinates ``x`` / ``y``. The H&E pixel size is derived from it per section."""

Box = Sequence[int]


def _folder(name: str, path, names: Sequence[str]) -> Path:
    """The data set folder holding ``names``; a FileNotFoundError naming them otherwise."""
    try:
        folder = locate_dir("spatial", name, path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{err} Expected a folder {name!r} holding: {', '.join(names)}.") from None
    _need(folder, names)
    return folder


def _need(folder: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{folder} lacks {', '.join(missing)} (expected files: {', '.join(names)})."
        )


def _read_image(file: Path, crop: Box | None) -> tuple[np.ndarray, tuple[int, int, int, int], tuple[int, int]]:
    """``(y, x[, c])`` uint8 pixels of a PNG / JPEG, optionally the box ``(x0, y0, x1, y1)``."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # the files are known, large, and not decompression bombs
    with Image.open(file) as im:
        width, height = im.size
        box = (0, 0, width, height) if crop is None else _check_box(crop, width, height)
        if box != (0, 0, width, height):
            im = im.crop(box)
        arr = np.asarray(im)
    if arr.dtype != np.uint8:
        raise ValueError(f"{file}: expected 8-bit pixels, got {arr.dtype}.")
    return arr, box, (height, width)


def _check_box(crop: Box, width: int, height: int) -> tuple[int, int, int, int]:
    if len(crop) != 4:
        raise ValueError(f"crop must be (x0, y0, x1, y1) in pixels, got {crop!r}.")
    x0, y0, x1, y1 = (int(v) for v in crop)
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"crop {tuple(crop)!r} leaves no pixels of the {width} x {height} (width x height) image.")
    return x0, y0, x1, y1


def _inside(xy: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Centroids whose nearest pixel lies in the box."""
    x0, y0, x1, y1 = box
    px, py = np.floor(xy[:, 0] + 0.5), np.floor(xy[:, 1] + 0.5)
    return (px >= x0) & (px < x1) & (py >= y0) & (py < y1)


def _assemble(
    image: np.ndarray,
    channels: list[str],
    image_key: str,
    table,
    shapes_key: str,
    radius: float,
    box: tuple[int, int, int, int],
    pixel_size_um: float,
):
    """SpatialData of one image, one circles element and the table annotating it."""
    import geopandas as gpd
    from shapely import points
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, ShapesModel, TableModel
    from spatialdata.transformations import Identity, Scale, Sequence as TSequence, Translation

    x0, y0 = box[0], box[1]
    shift = Translation([x0, y0], axes=("x", "y")) if (x0, y0) != (0, 0) else Identity()
    to_um = TSequence([shift, Scale([pixel_size_um, pixel_size_um], axes=("x", "y"))])
    transforms = {"global": shift, "micrometres": to_um}
    img = Image2DModel.parse(
        image, dims=("c", "y", "x"), c_coords=channels, transformations=dict(transforms),
        chunks=(len(channels), 2048, 2048),
    )
    xy = table.obsm["spatial"]
    shapes = gpd.GeoDataFrame(
        {"radius": np.full(len(xy), float(radius))},
        geometry=points(xy[:, 0], xy[:, 1]),
        index=pd.Index(table.obs["instance_id"].to_numpy(), name="instance_id"),
    )
    shapes = ShapesModel.parse(shapes, transformations=dict(transforms))
    table.obs["region"] = pd.Categorical([shapes_key] * table.n_obs)
    table = TableModel.parse(table, region=shapes_key, region_key="region", instance_key="instance_id")
    return SpatialData(images={image_key: img}, shapes={shapes_key: shapes}, tables={"table": table})


def xenium_bone_marrow(
    path: str | os.PathLike | None = None,
    *,
    crop: Box | None = None,
    image_key: str = "dapi",
):
    """Xenium human bone and bone marrow: 84,518 cells x 477 genes with the DAPI image.

    10x Genomics public data (human bone and bone marrow, custom add-on panel) as prepared by
    broadinstitute/celldega_Xenium_data_human-bone-and-bone-marrow @52c6f2e3 (Broad academic
    licence, ``LICENSE.txt``): ``cell_feature_matrix.h5`` (the original 10x file: 477 gene
    features + 64 negative-control / unassigned features), ``cell_metadata.parquet`` (cell
    centroids ``[x, y]`` in pixels of the DAPI image), ``cluster.parquet`` (35 unnamed clusters
    of the celldega pipeline, missing for the 5,619 cells without gene counts; the data carry
    no cell-type names) and
    ``dapi_level15_stitched.png``, the full-resolution DAPI image (24,134 x 8,571 pixels,
    0.2125 um per pixel, 8-bit, values 0-31: low contrast, 83 % zeros).

    Parameters
    ----------
    path
        The ``xenium_bone_marrow`` folder (holding :data:`XENIUM_BONE_MARROW_FILES`); default
        search as described in :mod:`biodiffuse.datasets.histology`.
    crop
        ``(x0, y0, x1, y1)`` pixel box (``x1``, ``y1`` exclusive, clipped to the image): read only
        this part of the image and the cells whose centroid's pixel falls in it.
    image_key
        Name of the image element.

    Returns
    -------
    spatialdata.SpatialData
        ``images[image_key]``: ``(1, H, W)`` uint8 with ``c = ["DAPI"]``;
        ``shapes["cells"]``: circles at the centroids (radius 5 um = 23.5 px, nominal: the files
        hold no cell size); ``tables["table"]``: raw counts (CSR float32, cells x 477 genes,
        ``var["gene_ids"]``), ``obsm["spatial"]`` ``(x, y)`` centroids in the image's pixels
        (shifted by the crop corner), ``obs``: ``cell_id``, ``cluster`` (categorical), ``region``
        / ``instance_id`` (the annotated ``cells`` element, integer ids = row in the full file),
        ``total_counts``, ``control_probe_counts`` / ``control_codeword_counts`` /
        ``unassigned_codeword_counts`` (the 64 non-gene features, summed); ``uns["source"]``,
        ``uns["pixel_size_um"]``, ``uns["crop"]``.

    Raises
    ------
    FileNotFoundError
        If the folder or one of :data:`XENIUM_BONE_MARROW_FILES` is missing (the message names them).

    Examples
    --------
    >>> sdata = bd.datasets.xenium_bone_marrow(crop=(0, 0, 4000, 4000))
    >>> sdata.images["dapi"].shape                  # (1, 4000, 4000)
    >>> sdata.tables["table"].obs["cluster"].value_counts()
    """
    import anndata as ad
    import h5py
    from scipy import sparse

    folder = _folder(_XENIUM, path, XENIUM_BONE_MARROW_FILES)
    meta = pd.read_parquet(folder / "cell_metadata.parquet")
    xy = np.stack(meta["geometry"].to_numpy()).astype(np.float64)
    image, box, (full_h, full_w) = _read_image(folder / "dapi_level15_stitched.png", crop)
    if image.ndim != 2:
        raise ValueError(f"dapi_level15_stitched.png: expected one grey channel, got shape {image.shape}.")
    keep = _inside(xy, box)
    rows = np.flatnonzero(keep)
    if len(rows) == 0:
        raise ValueError(
            f"crop {tuple(int(v) for v in box)} holds no cell centroid (cells lie within x {xy[:, 0].min():.0f}-{xy[:, 0].max():.0f}, "
            f"y {xy[:, 1].min():.0f}-{xy[:, 1].max():.0f} of the {full_w} x {full_h} image); choose a box with cells."
        )

    with h5py.File(folder / "cell_feature_matrix.h5", "r") as h5:
        m = h5["matrix"]
        n_feat, n_cells = (int(v) for v in m["shape"][:])
        barcodes = m["barcodes"][:].astype(str)
        ftype = m["features/feature_type"][:].astype(str)
        names = m["features/name"][:].astype(str)
        ids = m["features/id"][:].astype(str)
        # Stored as features x cells CSC, i.e. cells x features CSR.
        x = sparse.csr_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=(n_cells, n_feat))
    if not np.array_equal(barcodes, meta.index.to_numpy(dtype=str)):
        raise ValueError("cell_feature_matrix.h5 barcodes and cell_metadata.parquet cell ids differ in order or content.")
    x = x[rows]
    gene = ftype == "Gene Expression"
    cluster = pd.read_parquet(folder / "cluster.parquet")["cluster"].reindex(meta.index)

    obs = pd.DataFrame(
        {
            "cell_id": barcodes[rows],
            # 5,619 cells without any gene count have no cluster: missing, not a category
            "cluster": pd.Categorical(
                cluster.astype(object).where(cluster.notna(), None).to_numpy()[rows],
                categories=sorted(cluster.dropna().astype(str).unique(), key=_natural),
            ),
            "instance_id": rows.astype(np.int64),
            "total_counts": np.asarray(x[:, gene].sum(axis=1)).ravel().astype(np.int64),
        },
        index=pd.Index(barcodes[rows], name=None),
    )
    for col, kind in (
        ("control_probe_counts", "Negative Control Probe"),
        ("control_codeword_counts", "Negative Control Codeword"),
        ("unassigned_codeword_counts", "Unassigned Codeword"),
    ):
        obs[col] = np.asarray(x[:, ftype == kind].sum(axis=1)).ravel().astype(np.int64)
    var = pd.DataFrame({"gene_ids": ids[gene]}, index=pd.Index(names[gene]))
    table = ad.AnnData(X=x[:, gene].astype(np.float32), obs=obs, var=var)
    table.obsm["spatial"] = xy[rows] - np.array([box[0], box[1]], dtype=np.float64)
    table.uns["source"] = (
        "10x Genomics Xenium human bone and bone marrow (custom add-on panel), via "
        "broadinstitute/celldega_Xenium_data_human-bone-and-bone-marrow @52c6f2e3 (Broad academic licence)"
    )
    table.uns["pixel_size_um"] = XENIUM_PIXEL_SIZE_UM
    table.uns["crop"] = list(box)
    return _assemble(
        image[None], ["DAPI"], image_key, table, "cells", 5.0 / XENIUM_PIXEL_SIZE_UM, box, XENIUM_PIXEL_SIZE_UM
    )


def _natural(s: str):
    return (0, int(s), s) if s.isdigit() else (1, 0, s)


def her2st(
    section: str = "C2",
    path: str | os.PathLike | None = None,
    *,
    crop: Box | None = None,
    image_key: str = "he",
):
    """HER2-positive breast cancer, spatial transcriptomics (ST) spots with full-resolution H&E.

    Andersson et al. 2021 (Nature Communications), patient C sections C2-C6 from almaan/her2st
    @85df7411 (no licence file): ``<section>_counts.tsv.gz`` (spots x ~15.7k genes, raw counts;
    row names ``"<x>x<y>"`` array coordinates), ``<section>_selection.tsv`` (spot array
    coordinates and ``pixel_x`` / ``pixel_y`` in pixels of the H&E image) and
    ``<section>_HE.jpg`` (about 9,300 x 9,900 pixels, RGB). Spots listed in the selection file
    but absent from the counts (2-3 in C3-C6) are left out. Sections C2-C6 have no pathologist
    annotation in the source, so ``obs`` has no cell-type column.

    The pixel size is derived from the spot grid: a least-squares fit of ``pixel_x`` / ``pixel_y``
    on the array coordinates ``new_x`` / ``new_y`` gives pixels per array step (about 290), and
    one step is :data:`ST_SPOT_SPACING_UM` (200 um), so about 0.69 um per pixel; spots are
    :data:`ST_SPOT_DIAMETER_UM` (100 um, about 145 px) across.

    Parameters
    ----------
    section
        One of :data:`HER2ST_SECTIONS` (any ``<section>`` whose three files exist in ``path``).
    path
        The ``her2st`` folder; default search as described in :mod:`biodiffuse.datasets.histology`.
    crop
        ``(x0, y0, x1, y1)`` pixel box: read only this part of the image and its spots.
    image_key
        Name of the image element.

    Returns
    -------
    spatialdata.SpatialData
        ``images[image_key]``: ``(3, H, W)`` uint8, ``c = ["R", "G", "B"]``; ``shapes["spots"]``:
        circles of radius 50 um in pixels; ``tables["table"]``: raw counts (CSR float32, spots x
        genes), ``obsm["spatial"]`` ``(x, y)`` spot centres in the image's pixels (shifted by the
        crop corner), ``obs``: ``spot_id`` (``"<x>x<y>"``), ``array_x`` / ``array_y``,
        ``section``, ``region`` / ``instance_id``, ``total_counts``; ``uns["pixel_size_um"]``,
        ``uns["source"]``, ``uns["crop"]``.

    Raises
    ------
    FileNotFoundError
        If the folder or one of the section's three files is missing (the message names them).

    Examples
    --------
    >>> sdata = bd.datasets.her2st("C3")
    >>> crop = bd.datasets.her2st("C2", crop=(2000, 2000, 6000, 6000))   # only this box and its spots
    >>> crop.tables["table"].obsm["spatial"][:3]                        # spot centres, pixels of the crop
    """
    import anndata as ad
    from scipy import sparse

    files = (f"{section}_counts.tsv.gz", f"{section}_selection.tsv", f"{section}_HE.jpg")
    folder = _folder(_HER2ST, path, files)
    sel = pd.read_csv(folder / files[1], sep="\t")
    need_cols = {"x", "y", "new_x", "new_y", "pixel_x", "pixel_y"}
    if not need_cols <= set(sel.columns):
        raise ValueError(f"{folder / files[1]} lacks columns {sorted(need_cols - set(sel.columns))}.")
    if "selected" in sel.columns:
        sel = sel[sel["selected"].astype(int) == 1]
    sel.index = sel["x"].astype(int).astype(str) + "x" + sel["y"].astype(int).astype(str)
    counts = pd.read_csv(folder / files[0], sep="\t", index_col=0)
    counts.index = counts.index.astype(str)
    if counts.columns.has_duplicates:
        raise ValueError(f"{folder / files[0]} has duplicated gene names.")
    spots = [s for s in counts.index if s in sel.index]
    sel = sel.loc[spots]
    # pixel size from the spot grid (all spots of the section, before any crop)
    design = np.column_stack([sel["new_x"], sel["new_y"], np.ones(len(sel))])
    coef, *_ = np.linalg.lstsq(design, sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64), rcond=None)
    px_per_step = float(np.mean([abs(coef[0, 0]), abs(coef[1, 1])]))
    pixel_size = ST_SPOT_SPACING_UM / px_per_step

    image, box, _ = _read_image(folder / files[2], crop)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{folder / files[2]}: expected an RGB image, got shape {image.shape}.")
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(dtype=np.float64)
    rows = np.flatnonzero(_inside(xy, box))
    values = counts.loc[[spots[i] for i in rows]].to_numpy()
    if values.size and (values.min() < 0 or not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"{folder / files[0]}: counts must be non-negative integers.")
    obs = pd.DataFrame(
        {
            "spot_id": [spots[i] for i in rows],
            "array_x": sel["x"].to_numpy(dtype=np.int64)[rows],
            "array_y": sel["y"].to_numpy(dtype=np.int64)[rows],
            "section": pd.Categorical([section] * len(rows)),
            "instance_id": rows.astype(np.int64),
            "total_counts": values.sum(axis=1).astype(np.int64),
        },
        index=pd.Index([f"{section}_{spots[i]}" for i in rows]),
    )
    table = ad.AnnData(
        X=sparse.csr_matrix(values.astype(np.float32)), obs=obs, var=pd.DataFrame(index=pd.Index(counts.columns.astype(str)))
    )
    table.obsm["spatial"] = xy[rows] - np.array([box[0], box[1]], dtype=np.float64)
    table.uns["source"] = f"HER2ST section {section} (Andersson et al. 2021), almaan/her2st @85df7411 (no licence file)"
    table.uns["pixel_size_um"] = pixel_size
    table.uns["crop"] = list(box)
    return _assemble(
        np.moveaxis(image, 2, 0), ["R", "G", "B"], image_key, table, "spots",
        ST_SPOT_DIAMETER_UM / 2 / pixel_size, box, pixel_size,
    )
