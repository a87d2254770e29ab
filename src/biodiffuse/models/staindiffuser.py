"""StainDiffuser: virtual (multiplex) staining of H&E by a multi-task diffusion model.

Method (StainDiffuser paper, section 4):

* **Data** (:meth:`StainDiffuser.setup_spatialdata`): a SpatialData with two registered image
  elements of the same size, the source (H&E, ``c = R, G, B``) and the target stains (e.g.
  HEMIT's DAPI + mIHC markers), both uint8. Training tiles are the rows of a tiles table
  (``obs`` ``y0``, ``x0``, ``tile_size``: the mosaics of :func:`biodiffuse.datasets.hemit`) or,
  without one, a grid over the whole image (:func:`biodiffuse.data.tiles.tile_origins`).
* **Segmentation labels, made automatically**: one threshold per stain (Otsu by default,
  :func:`biodiffuse.metrics.stain_masks`) fitted ONCE on the training tiles, kept in the
  registry; the masks are used in training only.
* **Network, objective** (:mod:`biodiffuse.module.staindiffuser`): one conditional UNet reads
  the H&E crop with the noisy targets. ``multiplex="joint"`` diffuses ``[stains, masks]``
  together (the staining and segmentation processes share the H&E encoder and attend to each
  other in its attention layers) with ``L = L_gen + seg_weight * L_seg``;
  ``multiplex="token"`` is the paper's Multi-StainDiffuser: one stain (+ its mask) per call,
  chosen by a one-hot stain id, one random stain per training tile.
* **Split by region**: validation tiles are whole regions (``obs["region"]``) when the table
  has them, else random tiles.
* **Prediction** (:meth:`StainDiffuser.predict`): the EDM ODE sampler on the model's schedule
  (:meth:`StainDiffuser.tune_sampler` chooses it on validation tiles) over ``crop_size`` crops with
  ``overlap``, stitched with a Hann window inside every tile (or over the whole image), through
  :func:`biodiffuse.diffusion.sample_rows` with one random stream per crop origin.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import write_setup_record
from ..data.histology import row_positions
from ..data.spatialdata import image_channels, image_element, is_spatialdata
from ..data.tiles import TileAccumulator, extract_tiles, tile_origins
from ..diffusion import Moments, check_count, point_sampler, row_seeds, sample_rows
from ..metrics.staining import stain_masks
from ..module.staindiffuser import (
    KINDS,
    MULTIPLEX,
    Pix2PixObjective,
    StainDiffuserObjective,
    build_adversary,
    build_network,
    make_prepare,
    to_unit,
)
from ._edm_sampling import IMAGE_EULER, EDMSamplerMixin, checked_sampler, pixel_draws
from .base import BaseModel, _real

__all__ = ["StainDiffuser"]

logger = logging.getLogger("biodiffuse")

_THRESHOLDS = ("otsu", "mean_sd")


def _uint8_element(sdata: Any, key: str) -> Any:
    elem = image_element(sdata, key)
    if elem.dtype != np.uint8:
        raise ValueError(f"images[{key!r}] has dtype {elem.dtype}; StainDiffuser reads uint8 images (0..255).")
    return elem


def _tile_table(table: Any, height: int, width: int, key: str) -> tuple[np.ndarray, int]:
    """``(n, 2)`` int64 origins and the one tile size of a tiles table, checked against the image."""
    obs = table.obs
    missing = [c for c in ("y0", "x0", "tile_size") if c not in obs.columns]
    if missing:
        raise KeyError(f"Table {key!r} lacks obs column(s) {missing} (tile origins y0, x0 and tile_size).")
    if table.n_obs == 0:
        raise ValueError(f"Table {key!r} has no tiles.")
    vals = obs[["y0", "x0", "tile_size"]].to_numpy(dtype=np.float64)
    if not np.isfinite(vals).all() or (vals != np.round(vals)).any():
        raise ValueError(f"Table {key!r}: y0, x0 and tile_size must be finite integers.")
    vals = vals.astype(np.int64)
    sizes = np.unique(vals[:, 2])
    if len(sizes) != 1 or sizes[0] < 1:
        raise ValueError(f"Table {key!r}: all tiles must have one positive tile_size, got {sizes[:5].tolist()}.")
    t = int(sizes[0])
    y, x = vals[:, 0], vals[:, 1]
    if y.min() < 0 or x.min() < 0 or (y + t).max() > height or (x + t).max() > width:
        raise ValueError(f"Table {key!r}: some tiles of size {t} fall outside the {height} x {width} images.")
    return vals[:, :2], t


class _Stitcher:
    """Reducer of :func:`~biodiffuse.diffusion.sample_rows`: crops (mean over the draws) are
    stitched with a Hann window inside their tile (a rectangle ``y0, x0, h, w``; the whole
    image is one), summed straight into the float32 output planes ``out`` (``(per, C, H, W)``:
    stains, then masks) and divided in place when the tile is finished. Memory: the outputs
    plus one tile's weight plane."""

    def __init__(self, out: np.ndarray, tiles: np.ndarray, crops: np.ndarray, crop_tile: np.ndarray, crop_size: int,
                 row_crop: np.ndarray, row_stain: np.ndarray | None) -> None:
        self.out, self.tiles, self.crops, self.crop_tile = out, tiles, crops, crop_tile
        self.crop_size, self.row_crop, self.row_stain = crop_size, row_crop, row_stain
        self.current: int | None = None
        self.acc: list[TileAccumulator] = []

    def _flush(self) -> None:
        for acc in self.acc:
            acc.result(0.0)
        self.current, self.acc = None, []

    def _start(self, tile: int) -> None:
        y, x, h, w = (int(v) for v in self.tiles[tile])
        per, n = self.out.shape[:2]
        region = self.out[..., y : y + h, x : x + w]  # a view: the tile's pixels of every plane
        if self.row_stain is None:  # one accumulator over all planes
            views = [region.reshape(per * n, h, w)]
        else:  # token mode: one per stain, over its stain [and mask] planes
            views = [region[:, s] for s in range(n)]
        if not all(np.shares_memory(v, self.out) for v in views):  # the sums must land in the outputs
            raise RuntimeError("internal error: a stitching view is a copy of the output planes.")
        self.acc = [TileAccumulator(v.shape[0], h, w, self.crop_size, "hann", out=v) for v in views]
        self.current = tile

    def __call__(self, rows: np.ndarray, draws: np.ndarray, diagnostics: dict) -> None:
        unit = to_unit(draws).mean(axis=1)  # (B, channels, c, c): mean over the draws
        for j, row in enumerate(rows):
            crop = self.row_crop[row]
            tile = int(self.crop_tile[crop])
            if tile != self.current:
                self._flush()
                self._start(tile)
            local = (self.crops[crop] - self.tiles[tile, :2])[None]
            self.acc[0 if self.row_stain is None else int(self.row_stain[row])].add(unit[j : j + 1], local)

    def result(self) -> "_Stitcher":
        self._flush()
        return self


class StainDiffuser(EDMSamplerMixin, BaseModel):
    """Multi-task diffusion from H&E to (multiplex) stains and their segmentation.

    Parameters
    ----------
    sdata
        SpatialData registered with :meth:`setup_spatialdata`.
    multiplex
        ``"joint"``: one diffusion over all stains and their masks at once; ``"token"``: one
        stain (+ mask) per network call, chosen by a one-hot stain id (the paper's
        Multi-StainDiffuser; one random stain per training tile).
    objective
        ``"edm"``: StainDiffuser (diffusion, sampled with the EDM ODE sampler of ``solver``,
        ``sigma_max``, ``sigma_min`` and ``rho``). The baselines on the same UNet, data and
        trainer: ``"l1"`` (a U-Net regressing the stains with an L1 loss) and ``"pix2pix"`` (the
        same with pix2pix's ``100 L1 + GAN`` loss against a PatchGAN discriminator; joint
        multiplexing only). The point models predict with one evaluation.
    segmentation
        Learn the stains' masks as a second task (the paper's multi-task model); ``False`` is
        the single-task model (no ``_seg`` element is predicted).
    seg_weight
        The paper's ``lambda``: ``L = L_gen + lambda L_seg``.
    crop_size
        Side of the training and prediction crops; divisible by ``2 ** (len(channel_mult) - 1)``
        and at most the tile size.
    model_channels, channel_mult, num_blocks, heads, dropout
        The UNet (:class:`~biodiffuse.nn.ConditionalImageUNet`, attention at its lowest level).
    solver, sigma_max, sigma_min, rho
        The diffusion model's sampler: ODE solver (``"euler"``, ``"heun"`` or ``"dpm2m"``) and Karras noise
        schedule (:func:`~biodiffuse.diffusion.edm_sampler`); :meth:`tune_sampler` chooses them
        on the validation tiles of a training run. The default, Euler from 80 to 0.002 with
        ``rho=3``, is MCD's image default; EDM's Heun from 80 (``rho=7``) diverged at a few steps
        on HEMIT (``docs/benchmarks.md``). Ignored by the point models.
    seed
        Seeds the initial weights.

    Notes
    -----
    **Training** (:meth:`~biodiffuse.models.BaseModel.train`) defaults: ``batch_size=16``, AdamW
    ``lr=2e-4``, ``weight_decay=0``, ``train_size=0.85`` (validation: whole regions of
    ``obs["region"]`` when present, else random tiles), about 3,000 optimiser steps (between 5
    and 2,000 epochs), EMA of the weights. Data option of ``train``: ``tiles`` (rows of the
    tiles table to learn from: a boolean mask, positions or obs names). The first call fits the
    stain thresholds on its training tiles; later calls reuse them. Without a tiles table the
    image is cut into a grid of tiles of ``min(2 * crop_size, height, width)`` pixels.

    Examples
    --------
    >>> sdata = bd.datasets.hemit("train", tiles=200)
    >>> bd.models.StainDiffuser.setup_spatialdata(sdata, source_key="he", target_key="mihc")
    >>> model = bd.models.StainDiffuser(sdata, crop_size=64)
    >>> model.train()
    >>> test = bd.datasets.hemit("test", tiles=20)
    >>> out = model.predict(test)        # images "mihc_StainDiffuser" and "mihc_StainDiffuser_seg"
    """

    _model_name = "StainDiffuser"
    _train_defaults = dict(
        batch_size=16, lr=2e-4, weight_decay=0.0, train_size=0.85, max_epochs=None, steps=3000,
        epochs=(5, 2000), early_stopping_patience=None, min_patience=10, ema_decay="auto", lr_warmup_steps=100,
    )
    _data_kwargs = ("tiles",)
    _default_steps = 18
    _network_chunk = 32  # crops per network call (fixed, so results do not depend on batch_size)

    # --- set-up --------------------------------------------------------------------------------
    @classmethod
    def setup_spatialdata(
        cls,
        sdata: Any,
        *,
        source_key: str = "he",
        target_key: str = "mihc",
        stains: Sequence[str] | None = None,
        tiles_key: str | None = "tiles",
        threshold: str = "otsu",
        k: float = 1.0,
    ) -> None:
        """Register the source (H&E) and target (stains) images; writes only
        ``sdata.attrs["biodiffuse"]["StainDiffuser"]``.

        Parameters
        ----------
        sdata
            SpatialData holding both image elements (same ``y`` / ``x`` size, uint8).
        source_key
            Image element the model reads (e.g. ``"he"``, ``c = R, G, B``).
        target_key
            Image element of the stains to learn (e.g. ``"mihc"``).
        stains
            Channel names of the target to learn, in output order (default all).
        tiles_key
            Table whose ``obs`` ``y0``, ``x0``, ``tile_size`` (one size) give the training tiles
            (and optionally ``region``, for the validation split); if absent from ``sdata``
            (or None), the whole image is tiled.
        threshold
            How the stains' segmentation labels are made: ``"otsu"`` or ``"mean_sd"`` (mean +
            ``k`` standard deviations) over the training tiles' pixels.
        k
            Standard deviations for ``"mean_sd"``.

        Raises
        ------
        TypeError
            If ``sdata`` is not a SpatialData.
        KeyError
            For a missing image element, stain or tile column.
        ValueError
            For images of different sizes, non-uint8 images, repeated / empty stains, bad tiles
            or a bad threshold; ``sdata`` is left unchanged.

        Examples
        --------
        >>> sdata = bd.datasets.hemit("train", tiles=200)
        >>> bd.models.StainDiffuser.setup_spatialdata(sdata, source_key="he", target_key="mihc")
        >>> # or: learn two of the stains, labels from mean + 2 SD
        >>> bd.models.StainDiffuser.setup_spatialdata(sdata, stains=["DAPI", "mIHC_1"], threshold="mean_sd", k=2.0)
        """
        if not is_spatialdata(sdata):
            raise TypeError(f"StainDiffuser.setup_spatialdata needs a SpatialData, got {type(sdata).__name__}.")
        if threshold not in _THRESHOLDS:
            raise ValueError(f"threshold must be one of {_THRESHOLDS}, got {threshold!r}.")
        if not (np.isfinite(k) and k >= 0):
            raise ValueError(f"k must be finite and >= 0, got {k!r}.")
        if source_key == target_key:
            raise ValueError(f"source_key and target_key are both {source_key!r}; they must be two image elements.")
        src, tgt = _uint8_element(sdata, source_key), _uint8_element(sdata, target_key)
        if src.shape[1:] != tgt.shape[1:]:
            raise ValueError(
                f"images[{source_key!r}] is {src.shape[1]} x {src.shape[2]} but images[{target_key!r}] is "
                f"{tgt.shape[1]} x {tgt.shape[2]} (y x x); the two must be registered pixel to pixel."
            )
        source_channels, target_channels = image_channels(sdata, source_key), image_channels(sdata, target_key)
        stains = list(target_channels) if stains is None else [str(s) for s in stains]
        if not stains or len(set(stains)) != len(stains):
            raise ValueError(f"stains must be a non-empty list of distinct channel names, got {stains}.")
        lost = [s for s in stains if s not in target_channels]
        if lost:
            raise KeyError(f"Stain(s) {lost} not in images[{target_key!r}] (channels {target_channels}).")
        height, width = int(src.shape[1]), int(src.shape[2])
        tile_size = None
        if tiles_key is not None and tiles_key in sdata.tables:
            _, tile_size = _tile_table(sdata.tables[tiles_key], height, width, tiles_key)
        else:
            tiles_key = None
        write_setup_record(sdata, cls._model_name, dict(
            source_key=source_key, target_key=target_key, source_channels=source_channels, stains=stains,
            tiles_key=tiles_key, tile_size=tile_size, height=height, width=width, threshold=threshold, k=float(k),
        ))

    def __init__(
        self,
        sdata: Any,
        *,
        multiplex: str = "joint",
        objective: str = "edm",
        segmentation: bool = True,
        seg_weight: float = 1.0,
        crop_size: int = 64,
        model_channels: int = 32,
        channel_mult: Sequence[int] = (1, 2, 2),
        num_blocks: int = 1,
        heads: int = 4,
        dropout: float = 0.0,
        solver: str = IMAGE_EULER["solver"],
        sigma_max: float = IMAGE_EULER["sigma_max"],
        sigma_min: float = IMAGE_EULER["sigma_min"],
        rho: float = IMAGE_EULER["rho"],
        seed: int = 0,
    ) -> None:
        super().__init__()
        sampler = checked_sampler(solver=solver, sigma_max=sigma_max, sigma_min=sigma_min, rho=rho)
        if multiplex not in MULTIPLEX:
            raise ValueError(f"multiplex must be one of {MULTIPLEX}, got {multiplex!r}.")
        if objective not in KINDS:
            raise ValueError(f"objective must be one of {KINDS}, got {objective!r}.")
        if objective == "pix2pix" and multiplex != "joint":
            raise ValueError("objective='pix2pix' generates all stains at once: use multiplex='joint'.")
        if not (np.isfinite(seg_weight) and seg_weight >= 0):
            raise ValueError(f"seg_weight must be finite and >= 0, got {seg_weight!r}.")
        setup = self._setup_record(sdata, "setup_spatialdata")
        crop_size = check_count(crop_size, "crop_size")
        factor = 2 ** (len(channel_mult) - 1)
        if crop_size % factor:
            raise ValueError(f"crop_size {crop_size} must be a positive multiple of 2 ** (len(channel_mult) - 1) = {factor}.")
        largest = setup.get("tile_size") or min(setup["height"], setup["width"])
        if crop_size > largest:
            raise ValueError(f"crop_size {crop_size} is larger than the tiles ({largest} pixels).")
        self.registry = {**setup, "thresholds": None}
        self.init_args = dict(
            multiplex=multiplex, objective=objective, segmentation=bool(segmentation),
            seg_weight=float(seg_weight), crop_size=crop_size, model_channels=int(model_channels),
            channel_mult=[int(m) for m in channel_mult], num_blocks=int(num_blocks), heads=int(heads),
            dropout=float(dropout), seed=int(seed), **sampler,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            self.network = self._build_network()
        self.adata = sdata

    def _build_network(self):
        a = self.init_args
        return build_network(
            len(self.registry["stains"]), len(self.registry["source_channels"]), multiplex=a["multiplex"],
            model_channels=a["model_channels"], channel_mult=tuple(a["channel_mult"]), num_blocks=a["num_blocks"],
            heads=a["heads"], dropout=a["dropout"], segmentation=self.segmentation,
        )

    @property
    def kind(self) -> str:
        """The objective: ``"edm"`` (StainDiffuser), ``"l1"`` or ``"pix2pix"``."""
        return self.init_args.get("objective", "edm")

    @property
    def segmentation(self) -> bool:
        """Whether the model learns (and predicts) the stains' masks."""
        return bool(self.init_args.get("segmentation", True))

    def _adversary(self) -> torch.nn.Module:
        """pix2pix's discriminator: built (seeded) on the first ``train()``, kept for later calls;
        a training-time object, not saved with the model."""
        if getattr(self, "_adversary_net", None) is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.init_args["seed"]) + 1)
                self._adversary_net = build_adversary(
                    len(self.stains), len(self.registry["source_channels"]), crop_size=self.init_args["crop_size"],
                    segmentation=self.segmentation)
        return self._adversary_net

    @property
    def stains(self) -> list[str]:
        """The stains the model generates, in output order."""
        return list(self.registry["stains"])

    @property
    def thresholds(self) -> dict[str, float] | None:
        """The stains' segmentation thresholds (0..255), fitted on the first training tiles."""
        t = self.registry.get("thresholds")
        return None if t is None else dict(zip(self.stains, t))

    def _source(self, sdata: Any, key: str) -> Any:
        """The registered source channels of ``images[key]`` (by name, lazily)."""
        elem = _uint8_element(sdata, key)
        have = image_channels(sdata, key)
        missing = [c for c in self.registry["source_channels"] if c not in have]
        if missing:
            raise ValueError(f"images[{key!r}] lacks the model's source channel(s) {missing} (has {have}).")
        return elem.sel(c=list(self.registry["source_channels"]))

    def _validate_query(self, sdata: Any) -> None:
        if not is_spatialdata(sdata):
            raise TypeError(f"StainDiffuser works on a SpatialData, got {type(sdata).__name__}.")
        self._source(sdata, self.registry["source_key"])

    # --- training ------------------------------------------------------------------------------
    def _training_data(self, train_size: float, seed: int, tiles: Any = None):
        sdata, r = self.adata, self.registry
        if not is_spatialdata(sdata):
            raise TypeError("StainDiffuser trains on the SpatialData it was set up on.")
        src = self._source(sdata, r["source_key"])
        tgt = _uint8_element(sdata, r["target_key"])
        if src.shape[1:] != tgt.shape[1:]:
            raise ValueError(f"images[{r['source_key']!r}] and images[{r['target_key']!r}] differ in size.")
        height, width = int(src.shape[1]), int(src.shape[2])
        groups = None
        if r.get("tiles_key"):
            table = sdata.tables[r["tiles_key"]]
            origins, size = _tile_table(table, height, width, r["tiles_key"])
            rows = row_positions(table, tiles, unique=True)
            origins = origins[rows]
            if "region" in table.obs.columns:
                groups = table.obs["region"].astype(str).to_numpy()[rows]
        else:
            if tiles is not None:
                raise ValueError("tiles= selects rows of a tiles table; this model was set up without one.")
            size = min(height, width, 2 * self.init_args["crop_size"])
            origins = tile_origins(height, width, size)
        if len(origins) < 2:
            raise ValueError(f"{len(origins)} training tile(s) selected; need at least 2.")
        if size < self.init_args["crop_size"]:
            raise ValueError(f"Tiles of {size} pixels are smaller than crop_size {self.init_args['crop_size']}.")
        source = extract_tiles(src.data, origins, size)
        target = extract_tiles(tgt.sel(c=self.stains).data, origins, size)
        tr = self._split_tiles(len(origins), groups, train_size, seed)
        self._validation_tiles = (origins[~tr], size)  # for tune_sampler
        if r.get("thresholds") is None:  # fitted once, on the training tiles only
            _, thr = stain_masks(target[tr], method=r["threshold"], k=r["k"])
            r["thresholds"] = [float(t) for t in thr]
        masks, _ = stain_masks(target, thresholds=r["thresholds"])
        logger.info("StainDiffuser: %d training and %d validation tiles of %d pixels.", tr.sum(), (~tr).sum(), size)

        def part(m: np.ndarray) -> dict[str, torch.Tensor]:
            return {"source": torch.from_numpy(np.ascontiguousarray(source[m])),
                    "target": torch.from_numpy(np.ascontiguousarray(target[m])),
                    "mask": torch.from_numpy(masks[m].astype(np.uint8))}

        a = self.init_args
        common = dict(segmentation=self.segmentation, seg_weight=a["seg_weight"], crop_size=a["crop_size"])
        if self.kind == "pix2pix":
            objective = Pix2PixObjective(len(self.stains), adversary=self._adversary(), **common)
        else:
            objective = StainDiffuserObjective(a["multiplex"], len(self.stains), kind=self.kind, **common)
        return objective, part(tr), part(~tr) if (~tr).any() else None

    def _split_tiles(self, n: int, groups: np.ndarray | None, train_size: float, seed: int) -> np.ndarray:
        """Boolean mask of the training tiles: whole regions go to validation (those that bring
        the validation share closest to ``1 - train_size``, at least the smallest region, never
        all), else random tiles."""
        train = np.ones(n, dtype=bool)
        if train_size >= 1:
            return train
        rng = np.random.default_rng(seed)
        names = None if groups is None else np.unique(groups)
        if names is None or len(names) < 2:
            _, val = self._split(n, train_size, rng)
            train[val] = False
            return train
        goal, count, chosen = (1.0 - train_size) * n, 0, []
        sizes = {g: int((groups == g).sum()) for g in names}
        for g in rng.permutation(names):
            if len(chosen) < len(names) - 1 and abs(count + sizes[g] - goal) < abs(count - goal):
                chosen.append(g)
                count += sizes[g]
        if not chosen:
            chosen = [min(names, key=lambda g: (sizes[g], g))]
        return ~np.isin(groups, chosen)

    # --- sampling ------------------------------------------------------------------------------
    def _check_edm_sampler(self) -> None:
        if self.kind != "edm":
            raise ValueError(f"A {self.kind!r} model predicts with one network evaluation; it has no sampler to set or tune.")

    def network_evaluations(self, *, steps: int) -> int:
        """Network evaluations per crop (and draw) that ``steps`` sampler steps cost: ``steps``
        with Euler, ``2 * steps - 1`` with Heun; 1 for the point models.

        Parameters
        ----------
        steps
            Sampler steps, as in :meth:`predict`.

        Examples
        --------
        >>> model.network_evaluations(steps=5)       # Euler (the default): 5; Heun: 9
        5
        """
        return super().network_evaluations(steps=steps) if self.kind == "edm" else 1

    def _sample_crops(self, read, n_rows: int, shape: tuple[int, ...], *, seeds, sampler, n_samples: int,
                      batch_size: int, device: str, reducer):
        """The shared loop (:func:`~biodiffuse.diffusion.sample_rows`) over ``n_rows`` crops that ``read`` returns."""
        with self._on_device(device) as (net, dev):
            prepare = make_prepare(net, read, n_stains=len(self.stains), chunk=self._network_chunk, kind=self.kind)
            return sample_rows(prepare, n_rows, shape, seeds=seeds, sampler=sampler, n_samples=n_samples,
                               batch_size=batch_size, device=dev, reducer=reducer)

    def tune_sampler(
        self,
        *,
        nfe: int = 5,
        n_samples: int = 4,
        candidates: Sequence[dict[str, Any]] | None = None,
        max_tiles: int = 16,
        seed: int = 0,
        device: str = "auto",
    ) -> pd.DataFrame:
        """Choose the sampler (solver and noise schedule) by the fair CRPS of draws on validation tiles.

        Every candidate of :func:`~biodiffuse.diffusion.schedule_grid` at ``nfe`` network
        evaluations per draw samples the central ``crop_size`` crop of the validation tiles of
        the last training run (whole regions that early stopping held out; never test data).
        The one with the lowest fair CRPS per pixel and stain (intensities in ``[0, 1]``, the stain
        channels only) becomes the model's schedule (``init_args``, kept by :meth:`save`), and
        :meth:`predict` with ``steps`` equal to its ``steps`` then costs ``nfe`` evaluations per
        crop.

        Parameters
        ----------
        nfe
            Network evaluations per draw to tune for.
        n_samples
            Draws per crop (at least 2).
        candidates
            Schedules to try (dicts as :func:`~biodiffuse.diffusion.schedule_grid` returns);
            default: that grid.
        max_tiles
            Score at most this many validation tiles (a random subset, the same for every
            candidate). At 16 (the default) the 36 Heun and Euler candidates of ``schedule_grid(5)`` took 84-119 s
            for a 0.33 M-weight UNet on one CPU thread, 374 s in token mode (every stain of a crop
            is its own row; ``benchmarks/staining.py``).
        seed, device
            As in :meth:`predict`.

        Returns
        -------
        pandas.DataFrame
            One row per candidate: its settings, then ``crps``, ``energy_score``, ``r_p`` (mean
            per-stain Pearson of the draws' mean, over pixels) and ``coverage80`` as
            :func:`~biodiffuse.metrics.score_draws` gives them, best fair CRPS (``crps_fair``) first. The chosen row
            is kept in ``registry["sampler_tuning"]``.

        Raises
        ------
        ValueError
            For a point model (``"l1"``, ``"pix2pix"``), a model without validation tiles (not
            trained in this session, or ``train_size=1``), or bad arguments.

        Examples
        --------
        >>> model.train()
        >>> table = model.tune_sampler(nfe=5)
        >>> model.predict(test, steps=int(table.iloc[0]["steps"]))
        """
        from ..metrics import score_draws

        self._check_edm_sampler()
        origins, size = getattr(self, "_validation_tiles", (np.zeros((0, 2), np.int64), 0))
        self._check_tuning(n_samples, max_tiles, unit="crop", have_validation=len(origins) > 0)
        if len(origins) > max_tiles:
            origins = origins[np.sort(np.random.default_rng(seed).choice(len(origins), int(max_tiles), replace=False))]
        r, c = self.registry, self.init_args["crop_size"]
        crops = origins + (size - c) // 2  # the central crop of every tile
        source = extract_tiles(self._source(self.adata, r["source_key"]).data, crops, c)
        truth = extract_tiles(_uint8_element(self.adata, r["target_key"]).sel(c=self.stains).data, crops, c)
        y = pixel_draws(truth[:, None].astype(np.float64) / 255.0)[:, 0]
        n_stains, token = len(self.stains), self.init_args["multiplex"] == "token"
        rows = np.arange(len(crops) * (n_stains if token else 1))
        row_crop = rows // n_stains if token else rows
        channels = (1 if token else n_stains) * (2 if self.segmentation else 1)
        keep = 1 if token else n_stains  # the stain channels of a row (masks follow them)

        def read(b: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            return source[row_crop[b]], (b % n_stains) if token else None

        def score(sampler) -> dict[str, float]:
            out = self._sample_crops(
                read, len(rows), (channels, c, c), seeds=row_seeds(seed, [f"validation {i}" for i in rows]),
                n_samples=int(n_samples), batch_size=64, device=device, sampler=sampler,
                reducer=Moments(len(rows), transforms={"": lambda d, _: to_unit(d[:, :, :keep])}, keep_draws=True),
            )
            draws = out["draws"]  # (rows, S, keep, c, c)
            if token:  # rows are (crop, stain) pairs, stain fastest
                draws = draws.reshape(len(crops), n_stains, int(n_samples), c, c).transpose(0, 2, 1, 3, 4)
            return score_draws(y, pixel_draws(draws), levels=(0.8,))

        return self._choose_sampler(score, nfe=nfe, candidates=candidates, scored_on=f"{len(crops)} validation tiles")

    # --- task verb -----------------------------------------------------------------------------
    def predict(
        self,
        sdata: Any = None,
        *,
        image_key: str | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int | None = None,
        n_samples: int = 1,
        steps: int = 18,
        seed: int = 0,
        key_added: str | None = None,
        overwrite: bool = False,
        overlap: float = 0.25,
        labels_key: str | None = None,
        device: str = "auto",
    ) -> dict[str, Any]:
        """Virtually stain H&E: the stains and their segmentation as new image elements.

        Parameters
        ----------
        sdata
            SpatialData with the source image (default the attached one).
        image_key
            Source image element (default the registered one). With the registered key and the
            registered tiles table present, prediction runs tile by tile at the table's origins;
            otherwise the whole element is tiled.
        indices
            Rows of the tiles table to predict (positions or a boolean mask; default all).
            Pixels outside them are 0 in the outputs.
        batch_size
            Crops per batch (default 64; ``batch_size * n_samples`` draws in flight). Results do
            not depend on it: the network always runs on chunks of 32 draws and every crop has
            its own random stream.
        n_samples
            Independent draws per crop, averaged.
        steps
            Sampler steps on the model's schedule (:attr:`sampler_settings`): ``steps`` network
            evaluations per crop with Euler (the default), ``2 * steps - 1`` with Heun (see
            :meth:`network_evaluations`); ignored by the point models (``"l1"``, ``"pix2pix"``:
            one evaluation).
        seed
            Seed of the per-crop random streams (keyed by the crop's origin and, in token mode,
            the stain).
        key_added
            Name of the stain element (default ``"<target_key>_StainDiffuser"``); the
            segmentation goes to ``"<key_added>_seg"`` (multi-task models only), run parameters to ``sdata.attrs[key_added]``.
        overwrite
            Replace existing elements / attrs of those names.
        overlap
            Fraction in ``[0, 1)`` by which neighbouring crops overlap; the crops are stitched
            with a Hann window (crops never cross a tile's border).
        labels_key
            A labels element of cell (nucleus) segmentation on the source's pixel grid. Each
            cell's mean virtual stain over the nucleus grown by 2 pixels
            (:func:`biodiffuse.metrics.cell_means`, as :func:`~biodiffuse.metrics.nuclei_positivity`
            reads it) goes into a new table ``"<key_added>_cells"`` (``X``: cells x stains,
            ``obs["<stain>_positive"]``: above the stain's training threshold; annotating
            ``labels_key`` by ``obs["cell_id"]``, so spatialdata-plot / squidpy can colour the
            cells). Only cells whose grown region lies wholly in predicted pixels are listed.
        device
            ``"auto"`` (GPU when present), ``"cpu"``, ``"cuda"``.

        Returns
        -------
        dict
            ``{key_added: DataArray, key_added + "_seg": DataArray}``: the elements written,
            plus ``key_added + "_cells"``: the per-cell table (AnnData) with ``labels_key``;
            ``(c, y, x)`` float32 with the stain names on ``c``: stain intensity in ``[0, 1]``
            (the target's uint8 / 255; mean over the draws) and mask probability in ``[0, 1]``
            (no ``_seg`` entry for a single-task model).

        Raises
        ------
        TypeError
            If the object is not a SpatialData.
        KeyError
            For a missing element, or existing keys without ``overwrite``.
        ValueError
            For bad arguments or a source without the model's channels; nothing is written.

        Notes
        -----
        Memory: the float32 outputs (the source's size, one plane per stain [and mask]) plus
        one float32 weight plane of a tile (of the whole image when it is tiled as one) and
        the draws of one batch: the crops are summed straight into the outputs.

        Examples
        --------
        >>> test = bd.datasets.hemit("test", tiles=20)
        >>> out = model.predict(test, n_samples=2, steps=18)
        >>> out["mihc_StainDiffuser"].sizes, out["mihc_StainDiffuser_seg"].sizes   # (c, y, x) each
        """
        from spatialdata.models import Image2DModel
        from spatialdata.transformations import get_transformation

        self._require_trained()
        obj = self.adata if sdata is None else sdata
        if obj is None:
            raise ValueError("Pass the SpatialData to predict on (no object is attached to this model).")
        if not is_spatialdata(obj):
            raise TypeError(f"StainDiffuser predicts on a SpatialData, got {type(obj).__name__}.")
        r, c = self.registry, self.init_args["crop_size"]
        if not (0 <= _real("overlap", overlap) < 1):
            raise ValueError(f"overlap must lie in [0, 1), got {overlap!r}.")
        check_count(steps)
        check_count(n_samples, "n_samples")
        batch_size = 64 if batch_size is None else check_count(batch_size, "batch_size")
        image_key = r["source_key"] if image_key is None else image_key
        src = self._source(obj, image_key)
        height, width = int(src.shape[1]), int(src.shape[2])
        tiles_key = r.get("tiles_key")
        use_table = image_key == r["source_key"] and tiles_key is not None and tiles_key in obj.tables
        if use_table:
            table, rows = self._query(obj.tables[tiles_key], indices)
            origins, size = _tile_table(table, height, width, tiles_key)
            if size < c:
                raise ValueError(f"Tiles of {size} pixels are smaller than crop_size {c}.")
            tiles = np.column_stack([origins[rows], np.full((len(rows), 2), size)])
            names = [str(n) for n in table.obs_names[rows]]
        else:
            if indices is not None:
                raise ValueError("indices select rows of the tiles table; this prediction tiles the whole image.")
            if c > min(height, width):
                raise ValueError(f"images[{image_key!r}] ({height} x {width}) is smaller than crop_size {c}.")
            tiles, names = np.array([[0, 0, height, width]], dtype=np.int64), None
        stride = max(1, int(round(c * (1.0 - float(overlap)))))
        key = f"{r['target_key']}_StainDiffuser" if key_added is None else self._key(key_added, "")
        seg_key = f"{key}_seg" if self.segmentation else None
        self._check_free(obj.images, [k for k in (key, seg_key) if k], "images", overwrite)
        self._check_free(obj.attrs, [key], "attrs", overwrite)
        cells_key = None
        if labels_key is not None:
            labels = self._labels(obj, labels_key, height, width)
            cells_key = f"{key}_cells"
            self._check_free(obj.tables, [cells_key], "tables", overwrite)

        # every crop: its origin in the image and its tile (crops never cross a tile's border)
        parts = [tile_origins(int(h), int(w), c, stride) + [y, x] for y, x, h, w in tiles]
        crops = np.concatenate(parts).astype(np.int64)
        crop_tile = np.repeat(np.arange(len(tiles)), [len(p) for p in parts])
        n_stains, token = len(self.stains), self.init_args["multiplex"] == "token"
        if token:  # one row per (crop, stain)
            row_crop, row_stain = np.repeat(np.arange(len(crops)), n_stains), np.tile(np.arange(n_stains), len(crops))
            keys = [f"{y}_{x}|{self.stains[s]}" for (y, x), s in zip(crops[row_crop], row_stain)]
        else:
            row_crop, row_stain = np.arange(len(crops)), None
            keys = [f"{y}_{x}" for y, x in crops]
        data = src.data

        def read(b: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            sel, owner = crops[row_crop[b]], crop_tile[row_crop[b]]
            out = np.empty((len(b), data.shape[0], c, c), dtype=np.uint8)
            for t in np.unique(owner):  # one read per tile of the batch
                m = owner == t
                (y0, x0), (y1, x1) = sel[m].min(axis=0), sel[m].max(axis=0) + c
                window = np.asarray(data[:, y0:y1, x0:x1])
                out[m] = extract_tiles(window, sel[m] - [y0, x0], c)
            return out, None if row_stain is None else row_stain[b]

        per = 2 if self.segmentation else 1  # planes per stain: stain [, mask]
        out = np.zeros((per, n_stains, height, width), dtype=np.float32)
        stitcher = _Stitcher(out, tiles, crops, crop_tile, c, row_crop, row_stain)
        channels = (1 if token else n_stains) * (2 if self.segmentation else 1)
        sampler = self._sampler(int(steps)) if self.kind == "edm" else point_sampler
        self._sample_crops(read, len(row_crop), (channels, c, c), seeds=row_seeds(seed, keys), sampler=sampler,
                           n_samples=int(n_samples), batch_size=batch_size, device=device, reducer=stitcher)
        transforms = {cs: copy.deepcopy(tr) for cs, tr in get_transformation(src, get_all=True).items()}
        written = {key: out[0]} if seg_key is None else {key: out[0], seg_key: out[1]}
        for k, arr in written.items():
            obj.images[k] = Image2DModel.parse(arr, dims=("c", "y", "x"), c_coords=self.stains,
                                               transformations=copy.deepcopy(transforms))
        if cells_key is not None:
            covered = np.zeros((1, height, width), dtype=np.uint8)
            for y, x, h, w in tiles:
                covered[0, y : y + h, x : x + w] = 1
            obj.tables[cells_key] = self._cell_table(out[0], covered, labels, labels_key)
            written[cells_key] = None
        self._record_run(obj, key, dict(
            labels_key=labels_key, cells_key=cells_key, image_key=image_key, n_samples=int(n_samples), steps=int(steps), seed=int(seed), overlap=float(overlap),
            crop_size=c, stride=stride, multiplex=self.init_args["multiplex"], n_crops=len(crops),
            tiles=names, seg_key=seg_key, nfe_per_crop=self.network_evaluations(steps=int(steps)), objective=self.kind,
            **(self.sampler_settings if self.kind == "edm" else {}),
        ))
        return {k: obj.tables[k] if k == cells_key else obj.images[k] for k in written}

    @staticmethod
    def _labels(sdata: Any, key: str, height: int, width: int) -> np.ndarray:
        """The integer (y, x) labels element ``key``, checked against the source's size."""
        if key not in sdata.labels:
            raise KeyError(f"{key!r} is not a labels element of this SpatialData (have {list(sdata.labels.keys())}).")
        elem = sdata.labels[key]
        if not hasattr(elem, "dims"):  # multiscale: full resolution
            elem = next(iter(elem["scale0"].values()))
        lab = np.asarray(elem.values)
        if lab.shape != (height, width) or not np.issubdtype(lab.dtype, np.integer) or lab.min() < 0:
            raise ValueError(f"labels[{key!r}] must be non-negative integers on the source's {height} x {width} grid, "
                             f"got {lab.dtype} {lab.shape}.")
        return lab

    def _cell_table(self, stains: np.ndarray, covered: np.ndarray, labels: np.ndarray, labels_key: str) -> Any:
        """Per-cell table: mean virtual stain of each cell wholly inside the predicted pixels."""
        import anndata as ad
        import pandas as pd
        from spatialdata.models import TableModel

        from ..metrics.staining import cell_means

        ids, means = cell_means(stains, labels)
        _, inside = cell_means(covered, labels)
        keep = inside[:, 0] >= 1.0 - 1e-9  # the whole grown cell was predicted
        ids, means = ids[keep], means[keep]
        thr = np.asarray(self.registry["thresholds"], dtype=np.float64) / 255.0
        obs = pd.DataFrame({"cell_id": ids.astype(np.int64), "region": pd.Categorical([labels_key] * len(ids))},
                           index=[str(i) for i in ids])
        for j, stain in enumerate(self.stains):
            obs[f"{stain}_positive"] = means[:, j] > thr[j]
        table = ad.AnnData(means.astype(np.float32), obs=obs, var=pd.DataFrame(index=self.stains))
        return TableModel.parse(table, region=labels_key, region_key="region", instance_key="cell_id")

