"""GeneFlow: histology tiles from expression by rectified flow, and the genes that drive them.

Method (GeneFlow paper; ``docs/benchmarks.md`` for what we measured):

* **Data** (:meth:`GeneFlow.setup_spatialdata`): a SpatialData with an image (DAPI or H&E) and
  a table of cells or spots with ``obsm["spatial"]`` centroids. One tile of ``tile_size``
  pixels is cut around every row, once per :meth:`~GeneFlow.train` call
  (:func:`biodiffuse.data.histology.cell_tiles`; ``scale < 1`` averages a larger footprint
  down, e.g. a 100 um ST spot). The row's expression of the registered genes becomes counts
  per million **of those genes** + log1p (the paper's normalisation, on the panel, so a query
  with more genes gets the same numbers).
* **Split by region**: the validation rows are whole square blocks of the slide, and rows
  whose tile would overlap a block of the other split are left out
  (:func:`biodiffuse.data.histology.region_split`); ``cells=`` restricts training to the
  user's training region.
* **Network, objective, sampler** (:mod:`biodiffuse.module.geneflow`): the paper's RNA encoder
  conditions a UNet; rectified flow with the small stochastic term (``sigma = 0.05``); Euler /
  Heun steps or adaptive dopri5 through :func:`biodiffuse.diffusion.sample_rows` with one
  random stream per cell (``obs_name``). ``objective="edm"`` / ``"mse"`` train the same
  networks as the paper's diffusion and regression baselines; the EDM baseline samples with its
  own solver and schedule (:class:`~biodiffuse.models.EDMSamplerMixin`), which
  :meth:`GeneFlow.tune_sampler` chooses on the validation tiles.
* **Gene importance** (:meth:`GeneFlow.gene_importance`): the mean absolute gradient of the
  velocity's squared norm with respect to the input genes (:func:`biodiffuse.tl.gene_importance`).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import write_setup_record
from ..data.fields import MatrixField
from ..data.histology import (
    WindowCells, cell_tiles, cpm_log1p, region_split, row_positions, tile_footprint, tile_scaling, window_cells,
)
from ..data.spatialdata import image_channels, image_element, is_spatialdata
from ..diffusion import Moments, check_count, flow_evaluations, flow_sampler, point_sampler, row_seeds, sample_rows
from ..module.geneflow import OBJECTIVES, GeneFlowNetwork, GeneFlowObjective, build_network, make_prepare, to_tiles
from ._edm_sampling import EDMSamplerMixin, checked_sampler, pixel_draws
from .base import BaseModel

__all__ = ["GeneFlow"]

logger = logging.getLogger("biodiffuse")

_DEFAULT_STEPS = {"flow": 8, "edm": 8, "mse": 1}
#: The EDM baseline's default sampler: Euler from 80 with EDM's ``rho=7``, the schedule
#: ``tune_sampler`` chose at 8 evaluations on the validation blocks of both Xenium and HER2ST
#: (``docs/benchmarks.md``); the other image models' ``rho=3`` scored the worst KID on both.
EDM_DEFAULT = dict(solver="euler", sigma_max=80.0, sigma_min=0.002, rho=7.0)


class _Rows:
    """A stand-in with ``n_obs`` rows, so that windows take the one ``indices`` rule of every verb."""

    def __init__(self, n: int) -> None:
        self.n_obs = int(n)


class GeneFlow(EDMSamplerMixin, BaseModel):
    """Rectified flow from the expression of a cell (or spot) to the image tile around it.

    Parameters
    ----------
    sdata
        SpatialData registered with :meth:`setup_spatialdata`.
    objective
        ``"flow"`` (GeneFlow), or the paper's baselines on the same networks: ``"edm"`` (EDM
        diffusion) and ``"mse"`` (the conditional UNet regressed on the tile).
    sigma
        Scale of the flow path's stochastic term, ``x_t = (1 - t) x0 + t x1 + (1 - t) sigma eps``
        (GeneFlow eq. 8; 0 gives the plain linear path).
    time_sampling
        Flow training times: ``"uniform"`` or ``"logit_normal"``.
    dim, rank, encoder_heads, encoder_layers, pool
        The RNA encoder (:class:`~biodiffuse.nn.RNAEncoder`): embedding width, rank of the
        gene-gene relation, pooling heads, residual MLP blocks, ``"attention"`` or ``"mean"``.
    model_channels, channel_mult, num_blocks, attention_levels, heads
        The UNet (:class:`~biodiffuse.nn.ConditionalImageUNet`); ``tile_size`` must be divisible
        by ``2 ** (len(channel_mult) - 1)``.
    dropout
        Dropout in the encoder and the UNet.
    gene_l1
        Weight of the paper's L1 penalty on the encoder weights that read the genes.
    augment
        Random 90-degree rotations and flips of the training tiles.
    solver, sigma_max, sigma_min, rho
        ``objective="edm"`` only: the EDM sampler's ODE solver (``"euler"``, ``"heun"`` or ``"dpm2m"``) and
        Karras noise schedule (:func:`~biodiffuse.diffusion.edm_sampler`);
        :meth:`tune_sampler` chooses them on the validation tiles of a training run. The default,
        Euler from 80 to 0.002 with ``rho=7``, is what it chose on Xenium and HER2ST at 8 steps
        (``docs/benchmarks.md``). Ignored by ``"flow"`` (whose solver is ``generate``'s
        ``method``) and ``"mse"``.
    seed
        Seeds the initial weights.

    Notes
    -----
    **Training** (:meth:`~biodiffuse.models.BaseModel.train`) defaults: ``batch_size=64``, AdamW
    ``lr=2e-4``, ``weight_decay=0``, ``train_size=0.85`` (validation: whole blocks of the slide),
    about 3,000 optimiser steps (between 5 and 2,000 epochs), EMA of the weights. Data options of
    ``train``: ``cells`` (rows of the table to learn from: a boolean mask, positions or obs
    names, e.g. the training region) and ``block_size`` (side of the validation blocks in
    pixels; default 16 tile footprints, less where the slide holds fewer than 4 x 4 such
    blocks). The first call fixes the image scaling (0.5-99.5
    percentiles of the whole image for fluorescence, ``/ 255`` for RGB).

    Examples
    --------
    >>> sdata = bd.datasets.xenium_bone_marrow(crop=(0, 0, 4000, 4000))
    >>> bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=32, scale=0.5)
    >>> model = bd.models.GeneFlow(sdata)
    >>> model.train(max_epochs=50)
    >>> tiles = model.generate(n_samples=4, steps=8)      # DataArray (cell, sample, c, y, x)
    >>> model.gene_importance()                           # table.var["GeneFlow_importance"]
    """

    _model_name = "GeneFlow"
    _train_defaults = dict(
        batch_size=64, lr=2e-4, weight_decay=0.0, train_size=0.85, max_epochs=None, steps=3000,
        epochs=(5, 2000), early_stopping_patience=None, min_patience=10, ema_decay="auto", lr_warmup_steps=100,
    )
    _data_kwargs = ("cells", "block_size")
    _default_steps = 8
    _network_chunk = 32  # tile draws per network call (fixed, so results do not depend on batch_size)

    # --- set-up --------------------------------------------------------------------------------
    @classmethod
    def setup_spatialdata(
        cls,
        sdata: Any,
        *,
        image_key: str,
        table_key: str = "table",
        mode: str = "single",
        tile_size: int = 64,
        scale: float = 1.0,
        layer: str | None = None,
        genes: Sequence[str] | None = None,
        spatial_key: str = "spatial",
        pixels_per_unit: float = 1.0,
        scaling: str = "auto",
        max_cells: int | None = None,
        min_cells: int = 1,
    ) -> None:
        """Register an image and the table of cells / spots; writes only
        ``sdata.attrs["biodiffuse"]["GeneFlow"]``.

        Parameters
        ----------
        sdata
            SpatialData with the image element and the table.
        image_key
            Image element ``(c, y, x)`` (e.g. ``"dapi"``, ``"he"`` with ``c = R, G, B``).
        table_key
            Table of raw counts with ``obsm[spatial_key]``.
        mode
            ``"single"``: one tile per row of the table (a cell, or a spot of several cells),
            centred on it. ``"window"``: the image is cut into a grid of square windows of the
            tile's footprint (``tile_size / scale`` pixels, side by side); each window's tile is
            conditioned on all the cells whose centroid lies in it (the RNA encoder pools them
            with attention, padding masked).
        tile_size
            Side of the tiles in output pixels.
        scale
            Output pixels per image pixel (``1 / k``: ``k * tile_size`` image pixels averaged
            down; e.g. 0.25 for 64-pixel tiles of HER2ST spots).
        layer
            Counts layer of the table (None: ``X``).
        genes
            Genes that condition the model (default: all of the table's). For whole
            transcriptomes choose them first, on the training region, e.g.
            :func:`biodiffuse.data.histology.select_genes`.
        spatial_key, pixels_per_unit
            Centroids ``(x, y)`` in ``obsm[spatial_key]``, times ``pixels_per_unit`` to get image
            pixels (1 for the biodiffuse loaders).
        scaling
            ``"auto"``, ``"percentile"`` or ``"255"`` (:func:`biodiffuse.data.histology.tile_scaling`).
        max_cells, min_cells
            Window mode: at most ``max_cells`` cells per window (the nearest to its centre;
            default all), windows with fewer than ``min_cells`` cells are not used.

        Raises
        ------
        TypeError
            If ``sdata`` is not a SpatialData.
        KeyError
            For a missing image, table, ``obsm`` key or genes.
        ValueError
            On NaN / inf / negative counts, an empty table, bad centroids or arguments;
            ``sdata`` is left unchanged.

        Examples
        --------
        >>> sdata = bd.datasets.xenium_bone_marrow(crop=(0, 0, 4000, 4000))
        >>> bd.models.GeneFlow.setup_spatialdata(sdata, image_key="dapi", tile_size=32, scale=0.5)
        >>> spots = bd.datasets.her2st("C2")
        >>> bd.models.GeneFlow.setup_spatialdata(spots, image_key="he", tile_size=64, scale=0.25)
        """
        if not is_spatialdata(sdata):
            raise TypeError(f"GeneFlow.setup_spatialdata needs a SpatialData, got {type(sdata).__name__}.")
        if mode not in ("single", "window"):
            raise ValueError(f"mode must be 'single' (one tile per cell or spot) or 'window', got {mode!r}.")
        if mode == "window" and pixels_per_unit != 1.0:
            raise ValueError("Window mode needs centroids in image pixels (pixels_per_unit=1).")
        if max_cells is not None:
            check_count(max_cells, "max_cells")
        check_count(min_cells, "min_cells")
        if table_key not in sdata.tables:
            raise KeyError(f"{table_key!r} is not a table of this SpatialData (have {list(sdata.tables.keys())}).")
        table = sdata.tables[table_key]
        if table.n_obs == 0:
            raise ValueError(f"Table {table_key!r} has no rows.")
        channels = image_channels(sdata, image_key)
        tile_footprint(tile_size, scale)
        if scaling not in ("auto", "percentile", "255"):
            raise ValueError(f"scaling must be 'auto', 'percentile' or '255', got {scaling!r}.")
        if spatial_key not in table.obsm:
            raise KeyError(f"obsm[{spatial_key!r}] (centroids (x, y)) not in table {table_key!r}; have {list(table.obsm.keys())}.")
        xy = np.asarray(table.obsm[spatial_key], dtype=np.float64)
        if xy.ndim != 2 or xy.shape[1] != 2 or not np.isfinite(xy).all():
            raise ValueError(f"obsm[{spatial_key!r}] must be a finite (n, 2) array of (x, y) centroids.")
        if not (np.isfinite(pixels_per_unit) and pixels_per_unit > 0):
            raise ValueError(f"pixels_per_unit must be > 0, got {pixels_per_unit!r}.")
        names = MatrixField(layer, nonnegative=True).register(table)["names"]
        if genes is None:
            genes = names
        genes = [str(g) for g in genes]
        if not genes or len(set(genes)) != len(genes):
            raise ValueError("genes must be a non-empty list of distinct gene names.")
        lost = sorted(set(genes) - set(names))
        if lost:
            raise KeyError(f"{len(lost)} gene(s) not in table {table_key!r}: {lost[:5]}.")
        write_setup_record(sdata, cls._model_name, dict(
            image_key=image_key, table_key=table_key, mode=mode, tile_size=int(tile_size), scale=float(scale),
            layer=layer, genes=genes, channels=channels, spatial_key=spatial_key,
            pixels_per_unit=float(pixels_per_unit), scaling=scaling,
            max_cells=None if max_cells is None else int(max_cells), min_cells=int(min_cells),
        ))

    def __init__(
        self,
        sdata: Any,
        *,
        objective: str = "flow",
        sigma: float = 0.05,
        time_sampling: str = "uniform",
        dim: int = 128,
        rank: int = 16,
        encoder_heads: int = 4,
        encoder_layers: int = 2,
        pool: str = "attention",
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        attention_levels: Sequence[int] | None = None,
        heads: int = 4,
        dropout: float = 0.0,
        gene_l1: float = 0.0,
        augment: bool = True,
        solver: str = EDM_DEFAULT["solver"],
        sigma_max: float = EDM_DEFAULT["sigma_max"],
        sigma_min: float = EDM_DEFAULT["sigma_min"],
        rho: float = EDM_DEFAULT["rho"],
        seed: int = 0,
    ) -> None:
        super().__init__()
        sampler = checked_sampler(solver=solver, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho)
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        setup = self._setup_record(sdata, "setup_spatialdata")
        factor = 2 ** (len(channel_mult) - 1)
        if setup["tile_size"] % factor:
            raise ValueError(
                f"tile_size {setup['tile_size']} is not divisible by 2 ** (len(channel_mult) - 1) = {factor}; "
                "change channel_mult or set up with another tile_size."
            )
        self.registry = {**setup, "scaling_lo": None, "scaling_hi": None}
        self.init_args = dict(
            objective=objective, sigma=float(sigma), time_sampling=time_sampling, dim=dim, rank=rank,
            encoder_heads=encoder_heads, encoder_layers=encoder_layers, pool=pool, model_channels=model_channels,
            channel_mult=list(channel_mult), num_blocks=num_blocks,
            attention_levels=None if attention_levels is None else list(attention_levels), heads=heads,
            dropout=float(dropout), gene_l1=float(gene_l1), augment=bool(augment), seed=int(seed), **sampler,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.network = self._build_network()
        self.adata = sdata

    @property
    def objective(self) -> GeneFlowObjective:
        """The training loss, rebuilt from the init arguments (so a loaded model trains again)."""
        a = self.init_args
        return GeneFlowObjective(a["objective"], sigma=a["sigma"], time_sampling=a["time_sampling"],
                                 gene_l1=a["gene_l1"], augment=a["augment"])

    def _build_network(self) -> GeneFlowNetwork:
        skip = ("objective", "sigma", "time_sampling", "gene_l1", "augment", "seed", *EDM_DEFAULT)
        a = {k: v for k, v in self.init_args.items() if k not in skip}
        return build_network(len(self.registry["genes"]), len(self.registry["channels"]), **a)

    @property
    def genes(self) -> list[str]:
        """The registered genes, in the order the network reads them."""
        return list(self.registry["genes"])

    # --- reading -------------------------------------------------------------------------------
    def _table(self, obj: Any) -> Any:
        """The table of a SpatialData (the registered key), or an AnnData as is."""
        if is_spatialdata(obj):
            key = self.registry["table_key"]
            if key not in obj.tables:
                raise KeyError(f"{key!r} is not a table of this SpatialData (have {list(obj.tables.keys())}).")
            return obj.tables[key]
        from anndata import AnnData

        if not isinstance(obj, AnnData):
            raise TypeError(f"Pass a SpatialData or an AnnData of cells, got {type(obj).__name__}.")
        return obj

    def _expression(self, table: Any, rows: np.ndarray) -> np.ndarray:
        """CPM (over the registered genes) + log1p of ``rows``, float32 (rows x genes)."""
        try:
            counts = MatrixField(self.registry.get("layer"), nonnegative=True).read(table, self.genes, rows=rows, dtype=np.float64)
        except ValueError as err:
            raise ValueError(f"GeneFlow query: {err}") from None
        return cpm_log1p(counts)

    def _scaling(self, sdata: Any) -> tuple[np.ndarray, np.ndarray]:
        if self.registry.get("scaling_lo") is None:
            lo, hi = tile_scaling(sdata, image_key=self.registry["image_key"], method=self.registry["scaling"])
            self.registry["scaling_lo"], self.registry["scaling_hi"] = lo.tolist(), hi.tolist()
        return np.asarray(self.registry["scaling_lo"]), np.asarray(self.registry["scaling_hi"])

    def _tiles(self, sdata: Any, rows: np.ndarray | None, centres: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Tiles ``(n, C, T, T)`` in [0, 1] of the table rows (or around ``centres``) whose tile
        lies inside the image, and those rows (positions in ``centres``)."""
        r = self.registry
        return cell_tiles(
            sdata, image_key=r["image_key"], table_key=r["table_key"], tile_size=r["tile_size"], cells=rows,
            scale=r["scale"], spatial_key=r["spatial_key"], pixels_per_unit=r["pixels_per_unit"],
            scaling=self._scaling(sdata), centres=centres,
        )

    def windows(self, sdata: Any = None) -> WindowCells:
        """Window mode: the windows the model generates for, in the order ``indices`` counts them.

        Parameters
        ----------
        sdata
            A SpatialData with the registered image and table. Default: the attached object.

        Returns
        -------
        WindowCells
            The grid of windows of the tile's footprint that hold cells (row-major): ``origins``
            ``(N, 2)`` ``(y0, x0)``, ``centres`` (where :func:`~biodiffuse.data.cell_tiles`
            cuts the window's tile), ``index`` / ``mask`` (the table rows of each window's cells,
            -1 / False where padded) and ``values`` ``(N, M, G)``: the cells' expression of the
            model's genes as the model reads it (CPM + log1p, 0 where padded).

        Raises
        ------
        ValueError
            In single mode (there are no windows), or if the object lacks the model's genes or
            has other image channels.
        TypeError
            If the object is not a SpatialData.

        Examples
        --------
        >>> win = model.windows(sdata)
        >>> test = np.flatnonzero(win.within(held_out))      # windows whose cells are all held out
        >>> model.generate(sdata, indices=test, steps=8)
        """
        if self.registry["mode"] != "window":
            raise ValueError("windows() is for a window-mode GeneFlow; this one has one tile per cell or spot.")
        obj = self.adata if sdata is None else sdata
        if not is_spatialdata(obj):
            raise TypeError(f"windows() reads a SpatialData (its image and table), got {type(obj).__name__}.")
        self._validate_query(obj)
        return self._windows(obj)

    def _windows(self, sdata: Any) -> WindowCells:
        """Window mode: the grid of windows holding cells, their cells' CPM + log1p expression
        (``values`` (N, M, G), 0 where padded) and ``mask``."""
        r = self.registry
        _, height, width = image_element(sdata, r["image_key"]).shape
        size, _ = tile_footprint(r["tile_size"], r["scale"])
        wc = window_cells(
            self._table(sdata), window_size=size, image_shape=(height, width), spatial_key=r["spatial_key"],
            layer=r.get("layer"), genes=self.genes, max_cells=r.get("max_cells"), min_cells=r.get("min_cells", 1),
        )
        vals = cpm_log1p(wc.values.reshape(-1, wc.values.shape[-1]).astype(np.float64)).reshape(wc.values.shape)
        return wc._replace(values=vals)

    def _validate_query(self, obj: Any) -> None:
        table = self._table(obj)
        missing = sorted(set(self.genes) - set(map(str, table.var_names)))
        if missing:
            raise ValueError(f"The query lacks {len(missing)} of the model's genes (e.g. {missing[:5]}).")
        if is_spatialdata(obj):
            channels = image_channels(obj, self.registry["image_key"])
            if channels != self.registry["channels"]:
                raise ValueError(f"Image channels {channels} differ from the model's {self.registry['channels']}.")

    # --- training ------------------------------------------------------------------------------
    def _training_data(self, train_size: float, seed: int, cells: Any = None, block_size: float | None = None):
        sdata, r = self.adata, self.registry
        if not is_spatialdata(sdata):
            raise TypeError("GeneFlow trains on the SpatialData it was set up on.")
        table = self._table(sdata)
        rows = row_positions(table, cells, unique=True)
        if not len(rows):
            raise ValueError("cells selects no row to train on.")
        mask = None
        if r["mode"] == "window":  # the windows whose cells are all selected
            wc = self._windows(sdata)
            chosen = np.zeros(table.n_obs, dtype=bool)
            chosen[rows] = True
            ok = np.flatnonzero(wc.within(chosen))
            tiles, kept = self._tiles(sdata, None, centres=wc.centres[ok])
            kept = ok[kept]
            genes, mask, xy = wc.values[kept].astype(np.float32), wc.mask[kept], wc.centres[kept]
        else:
            tiles, kept = self._tiles(sdata, rows)
            genes = self._expression(table, kept)
            xy = np.asarray(table.obsm[r["spatial_key"]], dtype=np.float64)[kept] * r["pixels_per_unit"]
        if len(kept) < 2:
            raise ValueError(f"Only {len(kept)} of the selected rows / windows have a whole tile inside the image; need at least 2.")
        size, _ = tile_footprint(r["tile_size"], r["scale"])
        if train_size < 1:
            if block_size is None:  # 16 tile footprints, or less so that the slide holds >= 4 x 4 blocks
                block_size = max(float(size), min(16.0 * size, float(np.ptp(xy, axis=0).min()) / 4))
            labels = region_split(
                xy, block_size=float(block_size), fractions=(train_size, 1 - train_size),
                names=("train", "val"), seed=seed, tile_size=r["tile_size"], scale=r["scale"],
            )
        else:
            labels = np.full(len(kept), "train")
        tr, va = labels == "train", labels == "val"
        logger.info("GeneFlow: %d training and %d validation tiles (%d left out as a buffer between regions).",
                    tr.sum(), va.sum(), (~tr & ~va).sum())

        def part(m: np.ndarray) -> dict[str, torch.Tensor]:
            out = {"image": torch.from_numpy(np.ascontiguousarray(tiles[m])), "genes": torch.from_numpy(genes[m])}
            if mask is not None:
                out["mask"] = torch.from_numpy(mask[m])
            return out

        self._validation = part(va) if va.any() else None  # for tune_sampler
        return self.objective, part(tr), self._validation

    # --- task verbs ----------------------------------------------------------------------------
    def generate(
        self,
        adata: Any = None,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_samples: int = 1,
        steps: int | None = None,
        method: str | None = None,
        seed: int = 0,
        key_added: str | None = None,
        overwrite: bool = False,
        device: str = "auto",
    ):
        """Generate tiles for the expression of cells (or spots, or windows of cells).

        Parameters
        ----------
        adata
            Single mode: a SpatialData (its registered table) or an AnnData of cells with raw
            counts of the model's genes (matched by name; no image needed: e.g. cells edited in
            silico, or a scRNA-seq profile). Window mode: a SpatialData whose table's cells are
            gathered per window of the registered image's grid. Default: the attached object.
        indices
            Rows (single mode) or windows (window mode, in the grid's row-major order) to
            generate for (positions or a boolean mask); default all. Repeated positions count
            once, and the tiles come back in row order.
        batch_size
            Rows per batch (``batch_size * n_samples`` tiles go through the network at once;
            memory is flat in the number of rows). Default 64. The network always runs on
            chunks of 32 draws, so a row's tiles are the same numbers for any ``batch_size``
            (``"dopri5"`` shares its step size within a batch: equal within its tolerance).
        n_samples
            Tiles per row (independent draws).
        steps
            Solver steps (default 8, 1 for ``"mse"``).
        method
            Flow solver: ``"euler"`` (the default; ``steps`` evaluations per tile), ``"heun"``
            (``2 * steps``) or ``"dopri5"`` (adaptive, evaluations counted). The ``"edm"``
            objective samples with the model's own solver and schedule
            (:attr:`~biodiffuse.models.EDMSamplerMixin.sampler_settings`, changed by
            :meth:`~biodiffuse.models.EDMSamplerMixin.set_sampler` or :meth:`tune_sampler`) and
            ``"mse"`` with one evaluation: for them ``method`` is an error.
        seed
            Seed of the per-row random streams (keyed by ``obs_name``, or the window's origin):
            a row's tiles do not depend on the batch or on the other rows.
        key_added
            Default ``"GeneFlow_tiles"``. Single mode: ``obsm`` key of the table,
            ``(n_obs, n_samples, C, T, T)`` float32 in [0, 1], NaN for rows not generated; run
            parameters in ``uns[key_added]``. Window mode: a new image element of the SpatialData
            (the first draw of every window placed on the slide at the tiles' resolution, 0
            where no window was generated, channel names on ``c``, transformations to the source
            image's coordinate systems); run parameters in ``attrs[key_added]``.
        overwrite
            Replace an existing entry of that name.
        device
            ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``.

        Returns
        -------
        xarray.DataArray
            ``(cell, sample, c, y, x)`` tiles in [0, 1] of the rows generated, with the obs
            names on ``cell`` (window mode: ``(window, sample, c, y, x)`` with the windows'
            ``y0`` / ``x0`` in image pixels) and the image's channel names on ``c``;
            ``attrs["nfe"]`` holds the mean network evaluations per tile.

        Examples
        --------
        >>> tiles = model.generate(sdata, n_samples=4, steps=8)    # table.obsm["GeneFlow_tiles"]
        >>> tiles.sizes                                           # cell, sample, c, y, x
        >>> model.generate(sdata, indices=[0, 1, 2], method="heun", key_added="tiles_heun")
        """
        import xarray as xr

        obj = self.adata if adata is None else adata
        kind, r = self.init_args["objective"], self.registry
        steps = _DEFAULT_STEPS[kind] if steps is None else steps
        sampler = self._loop_sampler(steps, method)
        key = self._key(key_added, "tiles")
        if r["mode"] == "window":
            if not is_spatialdata(obj):
                raise TypeError("A window-mode GeneFlow generates from a SpatialData (its cells, gathered per window).")
            self._require_trained()
            wc = self._windows(obj)
            _, rows = self._query(_Rows(len(wc.origins)), indices)
            self._check_free(obj.images, [key], "images", overwrite)
            self._check_free(obj.attrs, [key], "attrs", overwrite)
            genes, mask = wc.values[rows].astype(np.float32), wc.mask[rows]
            keys = [f"window {y}_{x}" for y, x in wc.origins[rows]]
            read = lambda b: (genes[b], mask[b])  # noqa: E731
        else:
            table = self._table(obj) if obj is not None else None
            table, rows = self._query(table, indices)
            self._check_free(table.obsm, [key], "obsm", overwrite)
            self._check_free(table.uns, [key], "uns", overwrite)
            genes = self._expression(table, rows)
            keys = self._row_keys(table.obs_names[rows])
            read = lambda b: (genes[b], None)  # noqa: E731
        out = self._sample_tiles(read, len(rows), seeds=row_seeds(seed, keys), sampler=sampler, n_samples=n_samples,
                                 batch_size=64 if batch_size is None else check_count(batch_size, "batch_size"), device=device)
        tiles = to_tiles(out["draws"]).astype(np.float32)
        nfe = float(out["nfe"].mean())
        params = dict(n_samples=n_samples, steps=steps, method=method or ("euler" if kind == "flow" else None),
                      seed=seed, objective=kind, nfe_per_tile=nfe, n_rows=len(rows),
                      **(self.sampler_settings if kind == "edm" else {}))
        dims = ("sample", "c", "y", "x")
        if r["mode"] == "window":
            self._write_image(obj, key, tiles[:, 0], wc.origins[rows])
            self._record_run(obj, key, params)
            return xr.DataArray(tiles, dims=("window", *dims), attrs={"nfe": nfe}, coords={
                "y0": ("window", wc.origins[rows, 0]), "x0": ("window", wc.origins[rows, 1]), "c": list(r["channels"])})
        full = np.full((table.n_obs, *tiles.shape[1:]), np.nan, dtype=np.float32)
        full[rows] = tiles
        table.obsm[key] = full
        self._record_run(table, key, params)
        return xr.DataArray(tiles, dims=("cell", *dims), attrs={"nfe": nfe},
                            coords={"cell": np.asarray(table.obs_names[rows]), "c": list(r["channels"])})

    # --- sampling ------------------------------------------------------------------------------
    def _loop_sampler(self, steps: int, method: str | None):
        """The objective's loop sampler: the flow's ``method``, the EDM model's schedule, or one
        evaluation for ``"mse"``."""
        kind = self.init_args["objective"]
        if kind != "flow" and method is not None:
            raise ValueError(
                f"method={method!r} chooses the flow's solver; an {kind!r} model samples with "
                + ("its own solver and schedule (set_sampler, tune_sampler)." if kind == "edm" else "one evaluation.")
            )
        check_count(steps)
        if kind == "flow":
            return flow_sampler(int(steps), method or "euler")
        return self._sampler(int(steps)) if kind == "edm" else point_sampler

    def _sample_tiles(self, read, n_rows: int, *, seeds, sampler, n_samples: int, batch_size: int, device: str):
        """The shared loop (:func:`~biodiffuse.diffusion.sample_rows`) over ``n_rows`` tiles of
        the conditions that ``read`` returns; the draws on the model's scale."""
        r = self.registry
        shape = (len(r["channels"]), r["tile_size"], r["tile_size"])
        with self._on_device(device) as (net, dev):
            prepare = make_prepare(net, self.init_args["objective"], read, chunk=self._network_chunk)
            return sample_rows(prepare, n_rows, shape, seeds=seeds, sampler=sampler, n_samples=n_samples,
                               batch_size=batch_size, device=dev, reducer=Moments(n_rows, keep_draws=True))

    def _check_edm_sampler(self) -> None:
        if self.init_args["objective"] != "edm":
            raise ValueError(
                f"Only objective='edm' has an EDM sampler to set or tune; this model's is "
                f"{self.init_args['objective']!r} (the flow's solver is generate's method)."
            )

    def network_evaluations(self, *, steps: int, method: str | None = None) -> int:
        """Network evaluations per tile (and draw) that ``steps`` solver steps cost.

        ``"flow"``: ``steps`` with Euler, ``2 * steps`` with Heun (``"dopri5"`` counts them at
        run time: ``generate(...).attrs["nfe"]``); ``"edm"``: ``steps`` with Euler, ``2 * steps
        - 1`` with Heun (the model's solver); ``"mse"``: 1.

        Parameters
        ----------
        steps
            Solver steps, as in :meth:`generate`.
        method
            The flow's solver, as in :meth:`generate` (default ``"euler"``); an error for the
            other objectives.

        Examples
        --------
        >>> model.network_evaluations(steps=4, method="heun")     # a flow model: 8
        8
        """
        self._loop_sampler(steps, method)  # the same errors as generate
        kind = self.init_args["objective"]
        if kind == "flow":
            return flow_evaluations(int(steps), method or "euler")
        return super().network_evaluations(steps=steps) if kind == "edm" else 1

    def tune_sampler(
        self,
        *,
        nfe: int = 8,
        n_samples: int = 4,
        candidates: Sequence[dict[str, Any]] | None = None,
        max_tiles: int = 64,
        seed: int = 0,
        device: str = "auto",
    ) -> pd.DataFrame:
        """``objective="edm"``: choose the sampler (solver and noise schedule) by the fair CRPS of
        draws on the validation tiles.

        Every candidate of :func:`~biodiffuse.diffusion.schedule_grid` at ``nfe`` network
        evaluations per draw generates tiles for the validation rows of the last training run
        (whole blocks of the slide that early stopping held out; never test data), from their
        expression. The one with the lowest fair CRPS per pixel and channel (tiles in ``[0, 1]``)
        against the real tiles becomes the model's schedule (``init_args``, kept by
        :meth:`save`), and :meth:`generate` with ``steps`` equal to its ``steps`` then costs
        ``nfe`` evaluations per tile.

        Parameters
        ----------
        nfe
            Network evaluations per draw to tune for (8: the flow's default cost).
        n_samples
            Draws per tile (at least 2).
        candidates
            Schedules to try (dicts as :func:`~biodiffuse.diffusion.schedule_grid` returns);
            default: that grid.
        max_tiles
            Score at most this many validation tiles (a random subset, the same for every
            candidate).
        seed, device
            As in :meth:`generate`.

        Returns
        -------
        pandas.DataFrame
            One row per candidate: its settings, then ``crps``, ``energy_score``, ``r_p`` and
            ``coverage80`` as :func:`~biodiffuse.metrics.score_draws` gives them, best fair CRPS (``crps_fair``)
            first. The chosen row is kept in ``registry["sampler_tuning"]``.

        Raises
        ------
        ValueError
            For a ``"flow"`` or ``"mse"`` model, a model without validation tiles (not trained
            in this session, or ``train_size=1``), or bad arguments.

        Examples
        --------
        >>> model = bd.models.GeneFlow(sdata, objective="edm")
        >>> model.train()
        >>> table = model.tune_sampler(nfe=8)
        >>> model.generate(steps=int(table.iloc[0]["steps"]))
        """
        from ..metrics import score_draws

        self._check_edm_sampler()
        val = getattr(self, "_validation", None)
        self._check_tuning(n_samples, max_tiles, unit="tile", have_validation=val is not None)
        n = len(val["genes"])
        rows = np.arange(n)
        if n > max_tiles:
            rows = np.sort(np.random.default_rng(seed).choice(n, int(max_tiles), replace=False))
        genes = val["genes"].numpy()[rows]
        mask = val["mask"].numpy()[rows] if "mask" in val else None
        truth = val["image"].numpy()[rows].astype(np.float64)
        y = pixel_draws(truth[:, None])[:, 0]

        def read(b: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            return genes[b], None if mask is None else mask[b]

        def score(sampler) -> dict[str, float]:
            out = self._sample_tiles(read, len(rows), seeds=row_seeds(seed, [f"validation {i}" for i in rows]),
                                     sampler=sampler, n_samples=int(n_samples), batch_size=64, device=device)
            return score_draws(y, pixel_draws(to_tiles(out["draws"])), levels=(0.8,))

        return self._choose_sampler(score, nfe=nfe, candidates=candidates, scored_on=f"{len(rows)} validation tiles")

    def _write_image(self, sdata: Any, key: str, tiles: np.ndarray, origins: np.ndarray) -> None:
        """Window mode: the first draw of every window placed on the slide, as a new image element
        at the tiles' resolution (a scale transform back to the source image's pixels)."""
        from spatialdata.models import Image2DModel
        from spatialdata.transformations import Scale, Sequence as TSequence, get_transformation

        from ..data.tiles import TileAccumulator

        r, src = self.registry, image_element(sdata, self.registry["image_key"])
        k = round(1.0 / r["scale"])
        t = r["tile_size"]
        height, width = src.shape[1] // k, src.shape[2] // k
        acc = TileAccumulator(tiles.shape[1], height, width, t, "uniform")
        acc.add(tiles.astype(np.float64), np.minimum(origins // k, [height - t, width - t]))
        image = acc.result(0.0).astype(np.float32)
        up = Scale([float(k), float(k)], axes=("y", "x"))
        transforms = {cs: TSequence([up, tr]) for cs, tr in get_transformation(src, get_all=True).items()}
        sdata.images[key] = Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=list(r["channels"]),
                                               transformations=transforms)

    def gene_importance(
        self,
        adata: Any = None,
        *,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_t: int = 8,
        n_noise: int = 4,
        use_images: bool = True,
        seed: int = 0,
        key_added: str | None = None,
        overwrite: bool = False,
        device: str = "auto",
    ) -> pd.Series:
        """Which genes drive the generated morphology (GeneFlow section 4.3).

        The mean absolute gradient of the velocity's squared norm with respect to each input
        gene, over the rows, ``n_t`` stratified times and ``n_noise`` noise draws
        (:func:`biodiffuse.tl.gene_importance`).

        Parameters
        ----------
        adata
            SpatialData or AnnData (as :meth:`generate`); default the attached object.
        indices
            Rows to average over (default all).
        batch_size
            Rows per gradient computation (default 32).
        n_t, n_noise
            Times and noise draws per row.
        use_images
            With a SpatialData, evaluate on the training path between noise and the row's real
            tile (rows without a whole tile are left out); otherwise (or for an AnnData) at the
            noise itself.
        seed
            Seed of the per-row streams.
        key_added
            Column of the table's ``var`` (default ``"GeneFlow_importance"``); genes outside the
            model get NaN. Parameters in ``uns[key_added]``.
        overwrite
            Replace an existing column / ``uns`` entry.
        device
            Where to compute.

        Returns
        -------
        pandas.Series
            Importance per model gene (index: gene names), largest first.

        Examples
        --------
        >>> imp = model.gene_importance(sdata, n_t=8, n_noise=4)   # table.var["GeneFlow_importance"]
        >>> imp.head(10)                                           # the ten most important genes
        """
        from ..tl.importance import gene_importance, write_importance

        if self.init_args["objective"] != "flow":
            raise ValueError("gene_importance is defined for the flow's velocity (objective='flow').")
        obj = self.adata if adata is None else adata
        table = self._table(obj) if obj is not None else None
        key = self._key(key_added, "importance")
        images, mask, r = None, None, self.registry
        if r["mode"] == "window":
            if not is_spatialdata(obj):
                raise TypeError("A window-mode GeneFlow reads its windows from a SpatialData.")
            self._require_trained()
            wc = self._windows(obj)
            _, rows = self._query(_Rows(len(wc.origins)), indices)
            centres = wc.centres[rows]
            keys = [f"window {y}_{x}" for y, x in wc.origins[rows]]
        else:
            table, rows = self._query(table, indices)
            centres, keys = None, None
        self._check_free(table.var, [key], "var", overwrite)
        self._check_free(table.uns, [key], "uns", overwrite)
        if use_images and is_spatialdata(obj):
            tiles, kept = self._tiles(obj, None if centres is not None else rows, centres=centres)
            if not len(kept):
                raise ValueError("No selected row has a whole tile inside the image; pass use_images=False.")
            rows, images = (rows[kept] if centres is not None else kept), tiles * 2.0 - 1.0
            keys = None if keys is None else [keys[i] for i in kept]
        if r["mode"] == "window":
            x, mask = wc.values[rows].astype(np.float32), wc.mask[rows]
        else:
            x, keys = self._expression(table, rows), self._row_keys(table.obs_names[rows])
        with self._on_device(device, evaluate=False) as (net, dev):
            scores = gene_importance(
                net.velocity, x, image_shape=(len(r["channels"]), r["tile_size"], r["tile_size"]), encode=net.encode,
                images=images, mask=mask, keys=keys, n_t=n_t, n_noise=n_noise,
                batch_size=32 if batch_size is None else check_count(batch_size, "batch_size"), seed=seed, device=dev,
            )
        series = pd.Series(scores, index=pd.Index(self.genes), name=key)
        write_importance(table, series, key_added=key, overwrite=overwrite)
        self._record_run(table, key, dict(n_t=n_t, n_noise=n_noise, use_images=images is not None, seed=seed, n_rows=len(rows)))
        return series.sort_values(ascending=False)
