"""Throughput and memory of the two image models, through their own ``train()`` and generation.

Run ``python benchmarks/image_throughput.py --help``. For GeneFlow (expression -> tile) and
StainDiffuser (H&E -> stains) it measures, on the package's real paths:

- **training**: tiles per second over the optimiser steps after a warm-up, the median time of a
  step (forward, backward, AdamW, EMA) and of the wait for the next batch (the data loader's
  fetch and the transfer to the device), the share of the time spent waiting (issue 12: "training
  data loading never the bottleneck"), and the peak memory (CUDA: ``torch.cuda.max_memory_allocated``;
  CPU: the process's resident memory above its level before training, sampled every 10 ms);
- **generation** at growing sizes: GeneFlow's ``generate`` for 64, 256, 1,024 ... cells and
  StainDiffuser's whole-image ``predict`` on H&E images of growing side, with tiles (crops) per
  second and the peak working memory above what the output itself takes. Flat working memory
  in the number of tiles is issue 12's target (generation runs in batches) and issue 13's
  "memory bounded by the tile batch".

Data: ``--data real`` reads the benchmarks' data from ``../shared`` (a crop of the Xenium bone
marrow slide; HEMIT training tiles); ``--data synthetic`` makes random data of the same shapes
(477 genes and one DAPI channel; RGB H&E and 4 stains in 256-px tiles), for machines without
``../shared``. The cost of a step depends on the shapes, not on the pixels. The images that
StainDiffuser's ``predict`` stains are random H&E-sized noise in both modes.

CPU (the benchmarks' settings)::

    python benchmarks/image_throughput.py --threads 2 --out results/image_throughput_cpu

GPU at the papers' tile size (256 px; not yet run; deeper UNets, so that attention runs at 16 px or less:
the default (1, 2, 2) attends over 64 x 64 positions at 256 px)::

    python benchmarks/image_throughput.py --data synthetic --tile-size 256 --crop 256 --model-channels 64 \\
        --gf-channel-mult 1 2 2 4 4 --sd-channel-mult 1 1 2 2 4 4 --train-steps 60 --generate 64 256 1024 --predict-sides 2 4 8 --accelerator gpu --precision bf16-mixed \\
        --out results/image_throughput_gpu
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from lightning.pytorch.callbacks import Callback

__all__ = ["StepTimer", "PeakMemory", "main"]

XENIUM_GENES = 477  #: width of the Xenium panel (the synthetic GeneFlow data)
HEMIT_TILE = 256  #: side of HEMIT's tiles (the synthetic StainDiffuser data)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class StepTimer(Callback):
    """Lightning callback: the seconds of every optimiser step (``on_train_batch_start`` to
    ``on_train_batch_end``, so EMA's update is in it) and of the wait for every batch but an
    epoch's first (from the previous batch's end: the loader's fetch and the device transfer;
    an epoch's first wait would also hold validation). On CUDA it synchronises at both ends."""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.waits: list[float] = []
        self._start: float | None = None
        self._end: float | None = None

    @staticmethod
    def _now(pl_module) -> float:
        import torch

        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        t = self._now(pl_module)
        if batch_idx > 0 and self._end is not None:
            self.waits.append(t - self._end)
        self._start = t

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = self._now(pl_module)
        if self._start is not None:
            self.steps.append(self._end - self._start)

    def summary(self, batch_size: int, warmup: int) -> dict[str, float]:
        """Medians over the steps after the first ``warmup`` (and the waits among them)."""
        steps = np.asarray(self.steps[warmup:])
        waits = np.asarray(self.waits[warmup:])
        if len(steps) == 0:
            raise SystemExit(f"only {len(self.steps)} optimiser steps ran: raise --train-steps above --warmup {warmup}")
        step, wait = float(np.median(steps)), float(np.median(waits)) if len(waits) else 0.0
        return {"steps_timed": int(len(steps)), "step_s": step, "wait_s": wait,
                "wait_share": float(waits.sum() / (waits.sum() + steps.sum())) if len(waits) else 0.0,
                "train_tiles_per_s": batch_size / (step + wait)}


class PeakMemory:
    """Peak memory of a block: CUDA's allocated peak on ``device``, else the process's resident
    memory sampled every ``interval`` seconds; both in MiB above the level at the start."""

    def __init__(self, cuda: bool, interval: float = 0.01) -> None:
        self.cuda, self.interval = cuda, interval
        self.peak_mib = 0.0

    def __enter__(self) -> "PeakMemory":
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        import psutil

        _release_freed_memory()
        proc = psutil.Process()
        self._base = proc.memory_info().rss
        self._max = self._base
        self._stop = threading.Event()

        def sample() -> None:
            while not self._stop.is_set():
                self._max = max(self._max, proc.memory_info().rss)
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = (self._max - self._base) / 2**20


def _release_freed_memory() -> None:
    """Hand memory freed earlier back to the system (glibc's ``malloc_trim``), so that the resident
    level at a block's start is what is live, and the block's own allocations show as growth."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).malloc_trim(0)
    except (OSError, AttributeError, TypeError):  # not glibc: the level may include freed memory
        pass


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def geneflow_data(args, n_cells: int):
    """SpatialData registered for GeneFlow (single mode) and the number of its cells."""
    import biodiffuse as bd

    if args.data == "real":
        sdata = bd.datasets.xenium_bone_marrow(crop=tuple(args.xenium_crop))
        table = sdata.tables["table"]
        ok = np.asarray(table.X.sum(axis=1)).ravel() > 0
        if not ok.all():
            sdata.tables["table"] = table[ok].copy()
        # the benchmark's footprint (64 image px) averaged down to small tiles; native pixels above it
        scale = 1.0 / round(64 / args.tile_size) if args.tile_size < 64 else 1.0
        image_key = "dapi"
    else:
        sdata = synthetic_cells(n_cells, args.tile_size, seed=args.seed)
        scale, image_key = 1.0, "dapi"
    bd.models.GeneFlow.setup_spatialdata(sdata, image_key=image_key, tile_size=args.tile_size, scale=scale, mode="single")
    return sdata, sdata.tables["table"].n_obs


def synthetic_cells(n: int, tile: int, seed: int = 0):
    """``n`` cells on a grid ``tile`` pixels apart, raw counts of 477 genes, one uint8 DAPI channel."""
    import anndata as ad
    import spatialdata as sd
    from spatialdata.models import Image2DModel, TableModel

    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    yy, xx = np.divmod(np.arange(n), side)
    xy = np.column_stack([xx, yy]).astype(np.float64) * tile + tile / 2
    image = rng.integers(0, 256, (1, side * tile, side * tile), dtype=np.uint8)
    table = ad.AnnData(rng.poisson(1.0, (n, XENIUM_GENES)).astype(np.float32),
                       obs=pd.DataFrame(index=[f"cell{i}" for i in range(n)]),
                       var=pd.DataFrame(index=[f"gene{j}" for j in range(XENIUM_GENES)]))
    table.obsm["spatial"] = xy
    img = Image2DModel.parse(image, dims=("c", "y", "x"), c_coords=["DAPI"], chunks=(1, 4096, 4096))
    return sd.SpatialData(images={"dapi": img}, tables={"table": TableModel.parse(table)})


def staining_data(args):
    """SpatialData registered for StainDiffuser and its number of training tiles."""
    import biodiffuse as bd

    if args.data == "real":
        sdata = bd.datasets.hemit("train", tiles=args.sd_tiles)
    else:
        sdata = synthetic_tiles(args.sd_tiles, seed=args.seed)
    bd.models.StainDiffuser.setup_spatialdata(sdata, source_key="he", target_key="mihc")
    return sdata, sdata.tables["tiles"].n_obs


def synthetic_tiles(n: int, seed: int = 0):
    """``n`` HEMIT-shaped tiles (256 px, RGB H&E, 4 stains) in a mosaic, the last quarter another region."""
    import anndata as ad
    from spatialdata import SpatialData
    from spatialdata.models import Image2DModel, TableModel

    rng = np.random.default_rng(seed)
    cols = int(np.ceil(np.sqrt(n)))
    rows = -(-n // cols)
    h, w = rows * HEMIT_TILE, cols * HEMIT_TILE
    origins = np.array([((i // cols) * HEMIT_TILE, (i % cols) * HEMIT_TILE) for i in range(n)])
    he = rng.integers(0, 256, (3, h, w), dtype=np.uint8)
    mihc = rng.integers(0, 256, (4, h, w), dtype=np.uint8)
    n_val = max(1, n // 4)
    obs = pd.DataFrame({"y0": origins[:, 0], "x0": origins[:, 1], "tile_size": HEMIT_TILE,
                        "region": pd.Categorical(["r0"] * (n - n_val) + ["r1"] * n_val)},
                       index=[f"t{i}" for i in range(n)])
    return SpatialData(images={"he": Image2DModel.parse(he, dims=("c", "y", "x"), c_coords=["R", "G", "B"]),
                               "mihc": Image2DModel.parse(mihc, dims=("c", "y", "x"),
                                                          c_coords=["DAPI", "mIHC_1", "mIHC_2", "mIHC_3"])},
                       tables={"tiles": TableModel.parse(ad.AnnData(np.zeros((n, 0), np.float32), obs=obs))})


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------


def _train(model, n_rows: int, batch_size: int, args) -> dict[str, Any]:
    """Train for about ``warmup + train_steps`` optimiser steps; the step timer's summary and peak memory."""
    timer = StepTimer()
    epochs = max(1, int(np.ceil((args.warmup + args.train_steps) * batch_size / (0.85 * n_rows))))
    with PeakMemory(args.accelerator in ("gpu", "cuda")) as mem:
        t = time.perf_counter()
        model.train(max_epochs=epochs, batch_size=batch_size, early_stopping=False, enable_progress_bar=False,
                    accelerator=args.accelerator, precision=args.precision, callbacks=[timer], seed=args.seed)
        secs = time.perf_counter() - t
    return {"epochs": epochs, "train_s": secs, "train_peak_mib": mem.peak_mib, **timer.summary(batch_size, args.warmup)}


def measure_geneflow(args) -> dict[str, Any]:
    import biodiffuse as bd

    batch = args.batch_size or 32
    sdata, n = geneflow_data(args, max(args.gf_cells, max(args.generate)))
    model = bd.models.GeneFlow(sdata, model_channels=args.model_channels, channel_mult=tuple(args.gf_channel_mult),
                               dim=128, rank=16, seed=args.seed)
    params = sum(p.numel() for p in model.network.parameters())
    train = _train(model, n, batch, args)
    _log(f"GeneFlow: {train['train_tiles_per_s']:.1f} training tiles/s, wait share {train['wait_share']:.3f}")
    gen = []
    for k in sorted(args.generate):
        if k > n:
            _log(f"GeneFlow: {k} tiles asked, only {n} cells: skipped")
            continue
        with PeakMemory(args.accelerator in ("gpu", "cuda")) as mem:
            t = time.perf_counter()
            out = model.generate(indices=np.arange(k), steps=args.gf_steps, key_added="throughput", overwrite=True,
                                 device="cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
            secs = time.perf_counter() - t
        # what the call returns and what it writes: the tiles of the k rows and the table's obsm entry (every row)
        output_mib = 0.0 if mem.cuda else np.asarray(out).nbytes * (1 + n / k) / 2**20
        gen.append({"tiles": k, "s": secs, "tiles_per_s": k / secs, "peak_mib": mem.peak_mib, "output_mib": output_mib,
                    "working_mib": mem.peak_mib - output_mib})
        del out
        _log(f"GeneFlow: {k} tiles in {secs:.1f} s, peak {mem.peak_mib:.0f} MiB")
    return {"model": "GeneFlow", "params": params, "tile_px": args.tile_size, "batch_size": batch, "rows": n,
            "evals_per_tile": args.gf_steps, **train, "generation": gen}


def measure_staindiffuser(args) -> dict[str, Any]:
    import spatialdata as sd
    from spatialdata.models import Image2DModel

    import biodiffuse as bd

    batch = args.batch_size or 16
    sdata, n = staining_data(args)
    model = bd.models.StainDiffuser(sdata, crop_size=args.crop, model_channels=args.model_channels,
                                    channel_mult=tuple(args.sd_channel_mult), seed=args.seed)
    params = sum(p.numel() for p in model.network.parameters())
    train = _train(model, n, batch, args)
    _log(f"StainDiffuser: {train['train_tiles_per_s']:.1f} training crops/s, wait share {train['wait_share']:.3f}")
    gen = []
    rng = np.random.default_rng(args.seed)
    nfe = model.network_evaluations(steps=args.sd_steps)
    for m in sorted(args.predict_sides):
        side = m * args.crop
        he = sd.SpatialData(images={"he": Image2DModel.parse(rng.integers(0, 256, (3, side, side), dtype=np.uint8),
                                                               dims=("c", "y", "x"), c_coords=["R", "G", "B"])})
        with PeakMemory(args.accelerator in ("gpu", "cuda")) as mem:
            t = time.perf_counter()
            out = model.predict(he, image_key="he", steps=args.sd_steps, key_added="virtual", overwrite=True,
                                device="cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
            secs = time.perf_counter() - t
        output_mib = sum(np.asarray(v.values).nbytes for v in out.values()) / 2**20 if not mem.cuda else 0.0
        crops = int(he.attrs["virtual"].get("n_crops", 0)) if "virtual" in he.attrs else 0
        gen.append({"side_px": side, "megapixels": side * side / 1e6, "crops": crops, "s": secs,
                    "crops_per_s": crops / secs if crops else float("nan"), "megapixels_per_s": side * side / 1e6 / secs,
                    "peak_mib": mem.peak_mib, "output_mib": output_mib, "working_mib": mem.peak_mib - output_mib})
        del out, he
        _log(f"StainDiffuser: {side} px image in {secs:.1f} s, peak {mem.peak_mib:.0f} MiB")
    return {"model": "StainDiffuser", "params": params, "tile_px": args.crop, "batch_size": batch, "rows": n,
            "evals_per_tile": nfe, **train, "generation": gen}


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------


def format_tables(res: dict[str, Any]) -> str:
    """A training table (a row per model) and a generation table (a row per size)."""
    lines = ["| model | tile px | weights | batch | steps timed | training tiles / s | step (s) | data wait (s) | "
             "wait share | training peak (MiB) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        lines.append(f"| {r['model']} | {r['tile_px']} | {r['params'] / 1e6:.2f} M | {r['batch_size']} | "
                     f"{r['steps_timed']} | {r['train_tiles_per_s']:.1f} | {r['step_s']:.4f} | {r['wait_s']:.4f} | "
                     f"{r['wait_share']:.3f} | {r['train_peak_mib']:.0f} |")
    lines += ["", "| model | size | tiles (crops) | evals / tile | s | tiles / s | peak (MiB) | output (MiB) | "
                  "working (MiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        for g in r["generation"]:
            size = f"{g['side_px']} px image" if "side_px" in g else f"{g['tiles']} cells"
            n = g.get("tiles", g.get("crops"))
            rate = g.get("tiles_per_s", g.get("crops_per_s"))
            lines.append(f"| {r['model']} | {size} | {n} | {r['evals_per_tile']} | {g['s']:.2f} | {rate:.1f} | "
                         f"{g['peak_mib']:.0f} | {g['output_mib']:.0f} | {g['working_mib']:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--models", nargs="+", default=["geneflow", "staindiffuser"], choices=["geneflow", "staindiffuser"])
    p.add_argument("--data", choices=["real", "synthetic"], default="real")
    p.add_argument("--tile-size", type=int, default=32, help="GeneFlow's tile side (the benchmark's: 32)")
    p.add_argument("--crop", type=int, default=64, help="StainDiffuser's training / prediction crop (the benchmark's: 64)")
    p.add_argument("--model-channels", type=int, default=16)
    p.add_argument("--gf-channel-mult", type=int, nargs="+", default=[1, 2, 2])
    p.add_argument("--sd-channel-mult", type=int, nargs="+", default=[1, 1, 2, 2])
    p.add_argument("--batch-size", type=int, default=None, help="default: the benchmarks' (GeneFlow 32, StainDiffuser 16)")
    p.add_argument("--train-steps", type=int, default=40,
                   help="optimiser steps timed after the warm-up, at least (training runs whole epochs)")
    p.add_argument("--warmup", type=int, default=5, help="optimiser steps not timed")
    p.add_argument("--gf-cells", type=int, default=2000, help="synthetic GeneFlow data: cells (at least the largest --generate)")
    p.add_argument("--xenium-crop", type=int, nargs=4, default=[4000, 2000, 7000, 5000])
    p.add_argument("--sd-tiles", type=int, default=64, help="StainDiffuser training tiles (HEMIT's first n, or synthetic)")
    p.add_argument("--generate", type=int, nargs="+", default=[64, 256, 1024], help="GeneFlow: cells generated, each size once")
    p.add_argument("--gf-steps", type=int, default=8, help="GeneFlow's Euler steps (evaluations per tile)")
    p.add_argument("--predict-sides", type=int, nargs="+", default=[2, 4, 8],
                   help="StainDiffuser: H&E images of this many crops per side, stained whole")
    p.add_argument("--sd-steps", type=int, default=5, help="StainDiffuser's sampler steps")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="results/image_throughput")
    args = p.parse_args(argv)
    from _cli import limit_threads

    limit_threads(args.threads)
    import torch

    device = torch.cuda.get_device_name() if args.accelerator in ("gpu", "cuda") else f"CPU, {torch.get_num_threads()} thread(s)"
    res: dict[str, Any] = {"args": vars(args), "device": device, "models": []}
    for name in args.models:
        res["models"].append((measure_geneflow if name == "geneflow" else measure_staindiffuser)(args))
    table = format_tables(res)
    header = (f"{device}, {args.precision}; data {args.data}; whole epochs of at least {args.train_steps} timed steps after {args.warmup}; "
              f"UNet model_channels {args.model_channels}")
    print("\n" + header + "\n\n" + table + "\n", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps({**res, "header": header}, indent=1, default=str))
    Path(f"{out}.md").write_text(header + "\n\n" + table + "\n")
    return res


if __name__ == "__main__":
    main()
