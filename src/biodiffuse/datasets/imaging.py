"""Real multiplexed tissue images (MIBI-TOF, IMC) with cell segmentations, as SpatialData.

Read from the project's shared data folder: ``imaging/<name>/`` under the folder in the
``BIODIFFUSE_DATA_DIR`` environment variable, else ``../shared/data/imaging/<name>/`` relative
to the working directory and to the repository root. Files are TIFFs read with tifffile.
"""

from __future__ import annotations

import os

from ..io.channels import read_channel_tiffs
from ._locate import locate_dir

__all__ = ["mibi_granuloma", "imc_pancreas", "MIBI_NON_PROTEIN", "MIBI_REMOVED_BY_AUTHORS", "IMC_PANCREAS_CHANNELS"]

_MIBI = "mibi_tb_granuloma_point14"
_IMC = "imc_cytomapper_pancreas"

# Elemental and background mass channels of the MIBI panel, not antibodies. cohortData_info.txt
# lists C, Na, Si, Background, Au, Ta as "elemental channels or background channels"; Ca and Fe
# are elemental too (and all zero in this field of view). The other 39 files match the 39
# antibody targets of GranulomaPanel-final_comments.xlsx (HH3 = histone H3 and H3K9Ac are
# antibodies to proteins, kept; MastChyTry = chymase + tryptase on one mass, kept).
MIBI_NON_PROTEIN = ("Au", "Background", "C", "Ca", "Fe", "Na", "Si", "Ta")

# Antibodies the panel sheet marks "Negative in all controls, removed from analysis"; kept by
# the loader (CD56 is all zero here, Arginase1 nearly so), listed for callers who drop them.
MIBI_REMOVED_BY_AUTHORS = ("Arginase1", "CD56")

# Channel order of cytomapper's toy stacks (inst/scripts/3_GenerateToyData.Rmd,
# ``getChannels(pancreasImages, c("H3", "CD99", "PIN", "CD8a", "CDH"))``); the TIFFs carry no names.
IMC_PANCREAS_CHANNELS = ("H3", "CD99", "PIN", "CD8a", "CDH")
_IMC_IMAGES = ("E34", "G01", "J02")


def mibi_granuloma(path: str | os.PathLike | None = None, drop_non_protein: bool = True):
    """MIBI-TOF image of a tuberculosis granuloma (field of view "Point14"), with cell masks.

    McCaffrey et al. 2022 (Nature Immunology), as shipped in angelolab/ark-analysis
    (``data/example_dataset/flowsom_data``, MIT): 1024 x 1024 pixels, 47 mass channels
    (ion counts, uint16 in the files), and a segmentation mask with ids 0 to 1831.

    In the mask, 0 marks cell borders and id 1 the extracellular space (one region of 375,086
    pixels, 36 % of the image, touching every border, with a sixth of the cells' mean histone H3
    signal); both are background here, leaving cells 2 to 1831.

    Parameters
    ----------
    path
        The ``mibi_tb_granuloma_point14`` folder (holding ``channels/`` and
        ``segmentationmask_SampleID14.tif``); default search as described in this module.
    drop_non_protein
        Drop the elemental / background channels :data:`MIBI_NON_PROTEIN`, leaving the 39
        antibody channels.

    Returns
    -------
    spatialdata.SpatialData
        ``images["mibi"]``: ``(c, 1024, 1024)`` float32 counts, channel names as ``c``
        coordinates (sorted by name); ``labels["mibi_labels"]`` (id 1 set to 0);
        ``tables["table"]``: 1,830 cells (ids 2 to 1831) x
        channels of per-cell mean counts, ``obsm["spatial"]`` centroids (x, y),
        ``uns["source"]`` provenance.

    Examples
    --------
    >>> sdata = bd.datasets.mibi_granuloma()
    >>> sdata.images["mibi"].shape                  # (39, 1024, 1024): the antibody channels
    >>> cells = sdata.tables["table"]               # 1,830 cells x per-cell mean counts
    >>> full = bd.datasets.mibi_granuloma(drop_non_protein=False)   # all 47 mass channels
    """
    folder = locate_dir("imaging", _MIBI, path)
    sdata = read_channel_tiffs(
        folder / "channels",
        image_key="mibi",
        exclude=list(MIBI_NON_PROTEIN) if drop_non_protein else None,
        labels=folder / "segmentationmask_SampleID14.tif",
        background=(0, 1),
    )
    sdata.tables["table"].uns["source"] = (
        "MIBI-TOF TB granuloma Point14 (McCaffrey et al. 2022), angelolab/ark-analysis "
        "data/example_dataset/flowsom_data (MIT)"
    )
    return sdata


def imc_pancreas(path: str | os.PathLike | None = None):
    """Three small imaging mass cytometry crops of human pancreas, with cell masks.

    Damond et al. 2019 (Cell Metabolism), the toy data of BodenmillerGroup/cytomapper
    (``inst/extdata``, GPL>=2): images E34, G01 and J02, each 100 x 100 pixels x 5 channels
    (compensated float32 counts) with a uint16 cell mask. Cell ids are those of the full
    images, so they are not contiguous.

    Parameters
    ----------
    path
        The ``imc_cytomapper_pancreas`` folder; default search as described in this module.

    Returns
    -------
    spatialdata.SpatialData
        ``images["E34"]``, ``images["G01"]``, ``images["J02"]``: ``(c, 100, 100)`` float32 with
        channels :data:`IMC_PANCREAS_CHANNELS`; ``labels["<image>_labels"]``; one
        ``tables["table"]`` annotating the three labels elements (``obs["region"]`` names the
        labels element, ``obs["cell_id"]`` the id in it; ``obs_names`` ``"<image>_<id>"``).

    Examples
    --------
    >>> sdata = bd.datasets.imc_pancreas()
    >>> sdata.images["E34"].coords["c"].values.tolist()
    ['H3', 'CD99', 'PIN', 'CD8a', 'CDH']
    >>> sdata.tables["table"].obs["region"].value_counts()      # cells per labels element
    """
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import TableModel

    folder = locate_dir("imaging", _IMC, path)
    images, labels, tables = {}, {}, []
    for name in _IMC_IMAGES:
        one = read_channel_tiffs(
            folder / f"{name}_imc.tiff",
            image_key=name,
            labels=folder / f"{name}_mask.tiff",
            channel_names=IMC_PANCREAS_CHANNELS,
        )
        images[name] = one.images[name]
        labels[f"{name}_labels"] = one.labels[f"{name}_labels"]
        table = one.tables["table"]
        table.obs_names = [f"{name}_{i}" for i in table.obs["cell_id"]]
        tables.append(table)
    table = ad.concat(tables, merge="same")
    table.obs["region"] = table.obs["region"].astype("category")
    table.uns["source"] = (
        "IMC pancreas toy data (Damond et al. 2019), BodenmillerGroup/cytomapper inst/extdata (GPL>=2)"
    )
    table = TableModel.parse(table, region=list(labels), region_key="region", instance_key="cell_id")
    return SpatialData(images=images, labels=labels, tables={"table": table})
