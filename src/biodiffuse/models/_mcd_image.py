"""MCD on multiplexed tissue images held in SpatialData (MCD paper, imaging setting).

The image element ``(c, y, x)`` is block-averaged by ``downsample`` (the paper works on
64-pixel tiles at 16 x 16; the default here does the same), normalised per channel with the
pixels of the training region, and cut into ``tile_size`` tiles with half-tile overlap.
Training uses only tiles lying entirely inside the training region, with a validation region
of whole blocks held apart (no tile overlaps two regions). Imputation samples every tile,
stitches the draws with a Hann window, and writes new image elements at full resolution,
plus per-cell means into the table when the labels element is annotated by one.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..data.spatialdata import (  # noqa: F401 - re-exported: mcd.py reads them as img.<name>
    SDATA_ATTRS_KEY,
    image_element,
    image_array,
    image_channels,
    is_spatialdata,
    read_image_setup,
    write_image_setup,
)
from ..data.tiles import (
    TileAccumulator,
    crop_to_factor,
    downsample_mask,
    downsample_mean,
    spatial_split,
    tile_origins,
    tiles_inside,
    upsample_to,
)
from ..diffusion import Moments, check_count, row_seeds, sample_rows
from ..module.mcd import make_prepare
from ._edm_sampling import pixel_draws


__all__ = ["SDATA_ATTRS_KEY", "MCDImageMixin", "read_image_setup", "write_image_setup", "image_array", "image_channels", "region_tiles", "TileMoments"]


def region_tiles(
    shape: tuple[int, int], tile: int, holdout: np.ndarray | None, train_size: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Tile origins (half-tile stride) and which lie inside the training / validation regions.

    The validation region is a random set of blocks (a 4 x 4 grid, coarser on images under
    four tiles across; none under two) outside ``holdout``; tiles
    that touch ``holdout`` or cross a region border are used nowhere.
    """
    h, w = shape
    origins = tile_origins(h, w, tile, max(1, tile // 2))
    free = np.ones((h, w), bool) if holdout is None else ~holdout
    n_blocks = min(4, h // tile, w // tile)
    if train_size < 1.0 and n_blocks >= 2:
        frac = max(1.0 - train_size, 1.0 / n_blocks**2)
        _, val_mask = spatial_split(h, w, tile, test_fraction=frac, n_blocks=n_blocks, seed=seed)
        val_mask &= free
    else:
        val_mask = np.zeros((h, w), bool)
    train_mask = free & ~val_mask
    train = tiles_inside(origins, tile, train_mask)
    val = tiles_inside(origins, tile, val_mask) if val_mask.any() else np.zeros(len(origins), bool)
    if not train.any():
        raise ValueError("No training tile lies inside the training region; use a smaller tile_size or holdout.")
    return origins, train, val


def cell_means_frame(image: np.ndarray, labels: np.ndarray, names: Sequence[str], table) -> pd.DataFrame:
    """Per-cell means of ``image`` for the cells of ``table`` (matched by ``cell_id``), indexed like the table."""
    from ..io.channels import aggregate_by_labels

    frame = aggregate_by_labels(image, labels, list(names))
    instance_key = table.uns.get("spatialdata_attrs", {}).get("instance_key", "cell_id")
    ids = table.obs[instance_key].to_numpy()
    out = frame.reindex(ids)
    out.index = table.obs_names
    return out


class TileMoments:
    """Reducer of :func:`~biodiffuse.diffusion.sample_rows` for image tiles: per tile, the mean
    and mean of squares of the draws in the normalised [0, 1] and the original scale, stitched
    into a :class:`~biodiffuse.data.tiles.TileAccumulator` (Hann window) at the tiles' origins.

    Parameters
    ----------
    origins
        ``(n_tiles, 2)`` tile origins ``(y0, x0)`` at the model's resolution (rows of the loop).
    shape
        ``(C, h, w)`` of the stitched image.
    tile
        Tile side.
    inverse
        Normalised ``(n, C)`` -> original scale (the fitted normaliser's inverse).
    """

    def __init__(self, origins: np.ndarray, shape: tuple[int, int, int], tile: int, inverse) -> None:
        c, h, w = shape
        self.origins, self.c, self.tile, self.inverse = np.asarray(origins), c, tile, inverse
        self.acc = TileAccumulator(4 * c, h, w, tile)
        self.n_samples = 1

    def __call__(self, rows: np.ndarray, draws: np.ndarray, diagnostics: dict) -> None:
        c, t = self.c, self.tile
        zz = (draws + 1.0) / 2.0  # (B, n_samples, C, t, t)
        self.n_samples = zz.shape[1]
        orig = self.inverse(np.moveaxis(zz, 2, -1).reshape(-1, c)).reshape(*zz.shape[:2], t, t, c)
        orig = np.moveaxis(orig, -1, 2)
        self.acc.add(np.concatenate([zz.mean(1), (zz**2).mean(1), orig.mean(1), (orig**2).mean(1)], axis=1), self.origins[rows])

    def result(self) -> dict[str, np.ndarray]:
        """Stitched ``mean`` / ``variance`` (original scale) and ``mean_normalized`` /
        ``variance_normalized``, each ``(C, h, w)``; the variance is the sample variance of the
        draws (``ddof=1``), as :class:`~biodiffuse.diffusion.Moments` gives for tables."""
        mz, sz, mo, so = np.split(self.acc.result(), 4)
        k = self.n_samples / (self.n_samples - 1) if self.n_samples > 1 else 1.0
        return {
            "mean_normalized": mz, "variance_normalized": k * np.clip(sz - mz**2, 0, None),
            "mean": mo, "variance": k * np.clip(so - mo**2, 0, None),
        }


class MCDImageMixin:
    """The SpatialData side of :class:`~biodiffuse.models.MCD` (set-up, training, imputation)."""

    _inference_tiles = 64  # tiles per sampling batch
    _tile_chunk = 16  # tile draws per network call (fixed, so results do not depend on batch_size)

    @classmethod
    def setup_spatialdata(
        cls,
        sdata,
        *,
        image_key: str,
        tile_size: int = 64,
        downsample: int = 4,
        labels_key: str | None = None,
        table_key: str | None = None,
    ) -> None:
        """Register a multiplexed image of ``sdata`` for MCD (writes only ``sdata.attrs["biodiffuse"]["MCD"]``).

        Parameters
        ----------
        sdata
            SpatialData holding the image element.
        image_key
            Image element ``(c, y, x)`` with unique channel names as ``c`` coordinates.
        tile_size
            Tile size in full-resolution pixels (paper: 64).
        downsample
            Block-mean factor before the network (paper: 64 -> 16, i.e. 4); ``tile_size`` must
            be a multiple of it.
        labels_key, table_key
            Cell segmentation (labels element) and the table annotating it, for per-cell means
            of imputed channels. Default: the labels element ``f"{image_key}_labels"`` and the
            table annotating it, when present.

        Examples
        --------
        >>> sdata = bd.datasets.mibi_granuloma()
        >>> bd.models.MCD.setup_spatialdata(sdata, image_key="mibi", tile_size=64, downsample=4)
        >>> model = bd.models.MCD(sdata)
        """
        if not is_spatialdata(sdata):
            raise TypeError(f"setup_spatialdata needs a SpatialData, got {type(sdata).__name__}.")
        image_channels(sdata, image_key)  # dims and unique channel names, or a clear error
        downsample, tile_size = check_count(downsample, "downsample"), check_count(tile_size, "tile_size")
        if tile_size < 4 or tile_size % downsample:
            raise ValueError(f"tile_size ({tile_size}) must be >= 4 and a multiple of downsample ({downsample}).")
        if (tile_size // downsample) % 4:
            raise ValueError(f"tile_size / downsample = {tile_size // downsample} must be a multiple of 4 (the UNet halves it twice).")
        h, w = image_element(sdata, image_key).shape[1:]
        if min(h, w) < tile_size:
            raise ValueError(f"images[{image_key!r}] is {h} x {w}, smaller than tile_size {tile_size}.")
        if labels_key is None and f"{image_key}_labels" in sdata.labels:
            labels_key = f"{image_key}_labels"
        if labels_key is not None and labels_key not in sdata.labels:
            raise KeyError(f"{labels_key!r} is not a labels element (have {list(sdata.labels.keys())}).")
        if labels_key is not None and table_key is None:
            for name, table in sdata.tables.items():
                region = table.uns.get("spatialdata_attrs", {}).get("region")
                if region == labels_key or (isinstance(region, list) and labels_key in region):
                    table_key = name
                    break
        if table_key is not None and table_key not in sdata.tables:
            raise KeyError(f"{table_key!r} is not a table (have {list(sdata.tables.keys())}).")
        record = dict(image_key=image_key, tile_size=int(tile_size), downsample=int(downsample), labels_key=labels_key, table_key=table_key)
        write_image_setup(sdata, cls._model_name, record)

    # --- training ---------------------------------------------------------------------------
    def _image_training_tensors(self, holdout: np.ndarray | None, train_size: float, seed: int, max_pixels: int = 200_000):
        from ..data import ChannelNormalizer
        from ..data.tiles import extract_tiles

        setup = self.registry["setup"]
        f, tile = setup["downsample"], setup["tile_size"] // setup["downsample"]
        names = self.registry["target_names"]
        small = self._model_resolution(self.adata, setup["image_key"], names)
        if np.isnan(small).all(axis=(1, 2)).any():
            raise ValueError("Every registered channel must be present in the training image.")
        hold = None
        if holdout is not None:
            holdout = np.asarray(holdout, bool)
            if holdout.shape != tuple(image_element(self.adata, setup["image_key"]).shape[1:]):
                raise ValueError(f"holdout must be a boolean (H, W) mask of the image, got shape {holdout.shape}.")
            hold = downsample_mask(holdout, f) if f > 1 else holdout
        origins, train, val = region_tiles(small.shape[1:], tile, hold, train_size, seed)
        self.train_indices, self.validation_indices = np.flatnonzero(train), np.flatnonzero(val)
        self._validation_origins = origins[val]  # for tune_sampler (model resolution)
        if self.registry["normalizer"] is None:
            in_train = np.zeros(small.shape[1:], bool)
            for y0, x0 in origins[train]:
                in_train[y0 : y0 + tile, x0 : x0 + tile] = True
            pix = small[:, in_train].T
            if len(pix) > max_pixels:
                pix = pix[np.random.default_rng(seed).choice(len(pix), max_pixels, replace=False)]
            self.registry["normalizer"] = ChannelNormalizer().fit(pix).to_dict()
        z = self._normalize_image(small)

        def part(sel: np.ndarray) -> dict:
            import torch

            x = extract_tiles(z, origins[sel], tile).astype(np.float32)
            return {"x": torch.from_numpy(x), "available": torch.ones((len(x), len(names)), dtype=torch.bool)}

        return part(train), part(val) if val.any() else None, int(train.sum())

    def _validation_tiles(self, max_tiles: int, seed: int) -> np.ndarray:
        """The last training run's validation tiles (model scale, NaN kept), at most ``max_tiles`` of them."""
        from ..data.tiles import extract_tiles

        origins = getattr(self, "_validation_origins", None)
        if origins is None or len(origins) == 0:
            raise ValueError(
                "No validation tiles: this image model has not been trained in this session, or its training "
                "region was too small for a validation block (train_size=1 or under two tiles across)."
            )
        if len(origins) > max_tiles:
            origins = origins[np.sort(np.random.default_rng(seed).choice(len(origins), max_tiles, replace=False))]
        setup = self.registry["setup"]
        small = self._model_resolution(self.adata, setup["image_key"], self.registry["target_names"])
        return extract_tiles(self._normalize_image(small), origins, setup["tile_size"] // setup["downsample"])

    def _tile_scoring(self, hidden: np.ndarray, max_tiles: int, *, n_samples: int, seed: int, device: str):
        """For :meth:`tune_sampler`: the validation tiles' true values of the ``hidden`` channels per
        pixel (pixels, C_hidden) in the normalised scale, a ``draw(sampler)`` giving the matching
        per-pixel draws (pixels, n_samples, C_hidden), and a label for the log."""
        tiles = self._validation_tiles(max_tiles, seed)
        y = pixel_draws(((tiles[:, hidden] + 1.0) / 2.0)[:, None])[:, 0]

        def draw(sampler) -> np.ndarray:
            return pixel_draws(self._tile_draws(tiles, ~hidden, sampler, n_samples=n_samples, seed=seed, device=device))

        return y, draw, f"{len(tiles)} validation tiles"

    def _model_resolution(self, sdata, image_key: str, channels: Sequence[str | None]) -> np.ndarray:
        """``channels`` of ``images[image_key]`` (None: all NaN) block-averaged to the model's resolution."""
        f = self.registry["setup"]["downsample"]
        full = image_array(sdata, image_key, channels)
        return downsample_mean(crop_to_factor(full, f), f) if f > 1 else full

    def _sample_tiles(self, read, n: int, shape: tuple[int, ...], *, seeds, sampler, n_samples: int, batch_size: int, device: str, reducer):
        """The shared loop (:func:`~biodiffuse.diffusion.sample_rows`) over ``n`` tiles that ``read`` returns."""
        with self._on_device(device) as (net, dev):
            return sample_rows(make_prepare(net, read, self._tile_chunk), n, shape, seeds=seeds, sampler=sampler,
                               n_samples=n_samples, batch_size=batch_size, device=dev, reducer=reducer)

    def _tile_draws(self, tiles: np.ndarray, observed: np.ndarray, sampler, *, n_samples: int, seed: int, device: str) -> np.ndarray:
        """Draws of the unobserved channels of ``tiles`` (n, C, T, T; model scale) in the normalised
        [0, 1] scale: (n, n_samples, C_missing, T, T). Observed channels condition; the others are never read."""
        c = len(observed)
        x = np.nan_to_num(tiles, nan=0.0).astype(np.float32)  # make_prepare conditions on observed channels only

        def read(rows: np.ndarray):
            return x[rows], np.broadcast_to(observed, (len(rows), c)), None

        def run(smp: Any, reducer: Any) -> dict[str, np.ndarray]:
            return self._sample_tiles(
                read, len(x), x.shape[1:], seeds=row_seeds(seed, [f"validation tile {i}" for i in range(len(x))]), sampler=smp,
                n_samples=n_samples, batch_size=self._inference_tiles, device=device, reducer=reducer,
            )

        reducer = Moments(len(x), transforms={"": lambda d, r: (d[:, :, ~observed] + 1.0) / 2.0}, keep_draws=True)
        return self._run_recentred(run, sampler, reducer, getattr(sampler, "keeps_one_step", False))["draws"]

    def _normalize_image(self, small: np.ndarray) -> np.ndarray:
        """(C, h, w) values -> model scale [-1, 1]-ish, NaN kept."""
        c, h, w = small.shape
        flat = self._to_model_scale(small.reshape(c, -1).T.astype(np.float64))
        return flat.T.reshape(c, h, w).astype(np.float32)

    # --- inference --------------------------------------------------------------------------
    def _image_observed(self, sdata, image_key: str, observed: Sequence[str] | None, missing: Sequence[str] | None) -> tuple[np.ndarray, np.ndarray]:
        from ..data.fields import ImageField

        names = self.registry["target_names"]
        # duplicated channel names, wrong dims or no shared channel: a clear error naming the image
        have = set(ImageField(image_key).transfer(sdata, names).present)
        if observed is None and missing is None and self.init_args.get("target_channels"):
            missing = self.init_args["target_channels"]  # channel-specific model: impute its targets
        keep = self._observed_mask(observed, missing)
        obs = np.ones(len(names), bool) if keep is None else keep
        absent = [n for n, o in zip(names, obs) if o and n not in have]
        if observed is not None and absent:
            raise ValueError(f"observed channels absent from images[{image_key!r}]: {absent[:5]}.")
        obs &= np.isin(names, list(have))
        if obs.all():
            raise ValueError("Nothing to impute: every channel is observed; pass missing=[...].")
        if not obs.any():
            raise ValueError("No observed channel: the image shares no channel with the model, or all were declared missing.")
        return obs, np.array(names)[~obs]

    def image_posterior(
        self,
        sdata=None,
        *,
        batch_size: int | None = None,
        n_samples: int = 4,
        steps: int = 18,
        seed: int = 0,
        device: str = "auto",
        observed: Sequence[str] | None = None,
        missing: Sequence[str] | None = None,
        image_key: str | None = None,
        recentre: bool | None = None,
    ) -> dict[str, Any]:
        """Stitched posterior mean and variance of every channel at the model's resolution,
        without writing anything.

        Parameters
        ----------
        sdata, batch_size, n_samples, steps, seed, device, observed, missing, image_key, recentre
            As in :meth:`impute` (``batch_size``: tiles per batch, default 64). Every tile
            draws from its own random stream keyed by its origin (full-resolution pixels), so
            the result does not depend on ``batch_size``.

        Returns
        -------
        dict
            ``mean`` / ``variance`` (C, h, w) in the original scale, ``mean_normalized`` /
            ``variance_normalized`` in the normaliser's [0, 1] scale, ``observed`` (C,)
            booleans, ``names``, ``downsample``. Observed channels hold their measured
            (block-averaged) values with variance 0.

        Examples
        --------
        >>> post = model.image_posterior(sdata, missing=["CD3", "CD8"], n_samples=4, steps=18)
        >>> post["mean"].shape                 # (C, h, w): the image at 1 / downsample resolution
        >>> post["variance"][post["names"].index("CD8")]
        """
        from ..data import ChannelNormalizer
        from ..data.tiles import extract_tiles

        self._require_trained()
        if self.registry["mode"] != "image":
            raise TypeError("Table models: use posterior(adata, ...) or impute(adata, ...).")
        sdata = self.adata if sdata is None else sdata
        if not is_spatialdata(sdata):
            raise TypeError(f"Expected a SpatialData, got {type(sdata).__name__}.")
        setup = self.registry["setup"]
        image_key = setup["image_key"] if image_key is None else image_key
        obs, _ = self._image_observed(sdata, image_key, observed, missing)
        names = self.registry["target_names"]
        f, tile = setup["downsample"], setup["tile_size"] // setup["downsample"]
        # channels to impute are never read, so their values cannot leak into the condition
        small = self._model_resolution(sdata, image_key, [n if o else None for n, o in zip(names, obs)])
        c, h, w = small.shape
        if min(h, w) < tile:
            raise ValueError(f"images[{image_key!r}] is smaller than one tile ({tile * f} pixels).")
        z = np.nan_to_num(self._normalize_image(small), nan=0.0)
        origins = tile_origins(h, w, tile, max(1, tile // 2))
        recentre = self._check_recentre(recentre, steps, n_samples)
        norm = ChannelNormalizer.from_dict(self.registry["normalizer"])

        def read(rows: np.ndarray):
            return extract_tiles(z, origins[rows], tile), np.broadcast_to(obs, (len(rows), c)), None

        sampler = self._sampler(steps, keep_one_step=recentre)

        def run(smp: Any, reducer: Any) -> dict[str, np.ndarray]:
            return self._sample_tiles(
                read, len(origins), (c, tile, tile), seeds=row_seeds(seed, [f"{y * f},{x * f}" for y, x in origins]), sampler=smp,
                n_samples=n_samples, batch_size=self._inference_tiles if batch_size is None else batch_size, device=device,
                reducer=reducer,
            )

        out = self._run_recentred(run, sampler, TileMoments(origins, (c, h, w), tile, norm.inverse_transform), recentre)
        out.update(observed=obs, names=list(names), downsample=f)
        out["mean"][obs] = small[obs]
        out["variance"][obs] = 0.0
        return out

    def _impute_image(
        self,
        sdata,
        *,
        image_key: str | None,
        observed: Sequence[str] | None,
        missing: Sequence[str] | None,
        n_samples: int,
        steps: int,
        batch_size: int | None,
        seed: int,
        key_added: str | None,
        variance_key_added: str | bool | None,
        overwrite: bool,
        device: str,
        recentre: bool | None = None,
    ):
        from spatialdata.models import Image2DModel
        from spatialdata.transformations import get_transformation

        self._require_trained()
        sdata = self.adata if sdata is None else sdata
        if not is_spatialdata(sdata):
            raise TypeError(f"This MCD model was trained on images; pass a SpatialData, got {type(sdata).__name__}.")
        setup = self.registry["setup"]
        image_key = setup["image_key"] if image_key is None else image_key
        key = self._key(key_added, "imputed") if key_added is not None else f"{image_key}_MCD_imputed"
        vkey = self._variance_key(key, key_added, variance_key_added, f"{image_key}_MCD_variance", n_samples=n_samples)
        # per-cell means in the table: the same names as the elements when key_added is given
        cell_key = key_added or "MCD_imputed"
        cell_vkey = None if vkey is None else (vkey if key_added is not None or variance_key_added not in (None, True) else "MCD_variance")
        table_key = setup.get("table_key") if image_key == setup["image_key"] else None
        labels_key = setup.get("labels_key") if image_key == setup["image_key"] else None
        for k in (key, vkey):
            if k is not None and k in sdata and not overwrite:
                raise KeyError(f"sdata already holds an element {k!r}; pass overwrite=True or another key_added.")
        self._check_free(sdata.attrs, [key], "sdata.attrs", overwrite)
        with_table = labels_key is not None and table_key is not None and table_key in sdata.tables
        if with_table:
            self._check_free(sdata.tables[table_key].obsm, [cell_key, cell_vkey], f"sdata.tables[{table_key!r}].obsm", overwrite)
        post = self.image_posterior(
            sdata, image_key=image_key, observed=observed, missing=missing, n_samples=n_samples, steps=steps,
            batch_size=batch_size, seed=seed, device=device, recentre=recentre,
        )
        miss = ~post["observed"]
        names = [n for n, m in zip(post["names"], miss) if m]
        elem = image_element(sdata, image_key)
        h, w = elem.shape[1:]
        f = post["downsample"]
        transformations = get_transformation(elem, get_all=True)
        mean_full = upsample_to(post["mean"][miss], f, h, w).astype(np.float32)
        var_full = None if vkey is None else upsample_to(post["variance"][miss], f, h, w).astype(np.float32)
        sdata.images[key] = Image2DModel.parse(mean_full, dims=("c", "y", "x"), c_coords=names, transformations=transformations)
        if var_full is not None:
            sdata.images[vkey] = Image2DModel.parse(var_full, dims=("c", "y", "x"), c_coords=names, transformations=transformations)
        if with_table:
            labels = np.asarray(sdata.labels[labels_key].data)
            table = sdata.tables[table_key]
            table.obsm[cell_key] = cell_means_frame(mean_full, labels, names, table)
            if var_full is not None:
                table.obsm[cell_vkey] = cell_means_frame(var_full, labels, names, table)
        self._record_run(sdata, key, dict(
            image_key=image_key, n_samples=n_samples, steps=steps, seed=seed, observed=observed, missing=missing,
            imputed=names, variance_key_added=vkey, table_key=table_key if with_table else None,
            table_obsm_keys=[cell_key, cell_vkey] if with_table else None, recentre=self._check_recentre(recentre, steps, n_samples),
            network_evaluations_per_draw=self.network_evaluations(steps=steps), **self.sampler_settings,
        ))
        return sdata.images[key]
