"""Why StainDiffuser's few-step EDM Heun samples were noise: the denoiser per noise level and a
sweep of samplers, for one trained single-task model.

    python benchmarks/staining_sampler.py --train-steps 600 --out results/staining_sampler_600
    python benchmarks/staining_sampler.py --train-steps 3000 --out results/staining_sampler_3000

The model is the single-task StainDiffuser of ``benchmarks/staining.py`` (same data, UNet,
batch, learning rate and seed) trained for ``--train-steps`` optimiser steps; ``--weights`` reads
a network saved by an earlier run (``--save-weights``) instead of training. It is scored on the
central 64-px crop of 48 test tiles (random, seed 0) of the held-out HEMIT regions. This is a
diagnostic of the sampler family on test crops: nothing is chosen on it (models choose their
sampler on validation tiles with ``tune_sampler``).

Printed, per stain or averaged over the 4 stains (model scale [-1, 1]):

* the denoiser's mean squared error ``D(x + sigma n) - x`` at noise levels 0.01 .. 80, against
  the network-free ``c_skip (x + sigma n)`` (``F = 0``);
* for every sampler (EDM Heun / Euler, Karras schedules of ``schedule_grid(5)``, Heun 5 and 18
  from 80): the draws' mean squared error to the real stain, their high-frequency energy (mean
  squared 5-point Laplacian; the real crops' value is printed first) and the pixel Pearson r.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

SIGMAS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 80.0)


def high_frequency(a, channels: int) -> float:
    """Mean squared 5-point Laplacian of the first ``channels`` channels of (N, C, H, W)."""
    lap = 4 * a[..., 1:-1, 1:-1] - a[..., :-2, 1:-1] - a[..., 2:, 1:-1] - a[..., 1:-1, :-2] - a[..., 1:-1, 2:]
    return float((lap[:, :channels] ** 2).mean())


def pixel_r(a, x) -> float:
    """Mean over channels of the Pearson r over all pixels of (N, C, H, W) arrays."""
    c = x.shape[1]
    a, b = a[:, :c].transpose(0, 1).reshape(c, -1), x.transpose(0, 1).reshape(c, -1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return float(((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))).mean())


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-steps", type=int, default=600)
    p.add_argument("--weights", default=None, help="a network state dict saved with --save-weights (no training)")
    p.add_argument("--save-weights", default=None)
    p.add_argument("--crops", type=int, default=48)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/staining_sampler")
    args = p.parse_args(argv)
    from _cli import limit_threads

    limit_threads(args.threads)
    import torch

    import biodiffuse as bd
    import staining
    from biodiffuse.data.tiles import extract_tiles
    from biodiffuse.diffusion import EDMPrecond, edm_sampler, schedule_grid
    from biodiffuse.module.staindiffuser import SIGMA_DATA, build_network, to_model

    t0 = time.time()
    if args.weights is None:
        settings = argparse.Namespace(train_tiles=None, tiles_per_region=4, window=128, seed=0, crop=64, model_channels=16,
                                      train_steps=args.train_steps, batch_size=16, lr=5e-4, accelerator="cpu")
        model, fit_s = staining.train_model(staining.load(settings), settings, seed=0, segmentation=False)
        net = model.network
        print(f"trained {args.train_steps} steps in {fit_s:.0f} s", flush=True)
    else:
        net = build_network(4, 3, model_channels=16, channel_mult=(1, 1, 2, 2), segmentation=False)
        net.load_state_dict(torch.load(args.weights, weights_only=True))
    if args.save_weights:
        torch.save(net.state_dict(), args.save_weights)
    net.eval()
    denoiser = EDMPrecond(net, SIGMA_DATA)

    test = bd.datasets.hemit("test")
    obs = test.tables["tiles"].obs
    pick = np.random.default_rng(0).choice(len(obs), args.crops, replace=False)
    origins = obs[["y0", "x0"]].to_numpy()[pick] + 96  # the central 64 px of each 256-px tile
    he = to_model(extract_tiles(np.asarray(test.images["he"].data), origins, 64))
    x = to_model(extract_tiles(np.asarray(test.images["mihc"].data), origins, 64))
    c = x.shape[1]
    cond = {"image": he}
    rows: dict[str, list] = {"denoiser": [], "samplers": []}
    with torch.no_grad():
        g = torch.Generator().manual_seed(0)
        print("\n| sigma | D mse (DAPI, mIHC_1-3) | F = 0 mse |\n|---|---|---|")
        for s in SIGMAS:
            noisy = x + s * torch.randn(x.shape, generator=g)
            d = denoiser(noisy, torch.full((len(x),), float(s)), cond)
            skip = SIGMA_DATA**2 / (s**2 + SIGMA_DATA**2) * noisy
            mse, triv = ((d - x) ** 2).mean(dim=(0, 2, 3)).tolist(), ((skip - x) ** 2).mean(dim=(0, 2, 3)).tolist()
            rows["denoiser"].append({"sigma": s, "mse": mse, "mse_f0": triv})
            print(f"| {s:g} | {' / '.join(f'{v:.4f}' for v in mse)} | {np.mean(triv):.4f} |", flush=True)
        real_hf = high_frequency(x, c)
        print(f"\nreal crops: high-frequency energy {real_hf:.4f}\n")
        print("| solver | steps | sigma_max | sigma_min | rho | mse | high-freq | pixel r |\n|---|---|---|---|---|---|---|---|")
        cands = [dict(solver="heun", steps=1, sigma_max=80.0, sigma_min=0.002, rho=7.0)] + schedule_grid(5) + [
            dict(solver="heun", steps=5, sigma_max=80.0, sigma_min=0.002, rho=7.0),
            dict(solver="heun", steps=18, sigma_max=80.0, sigma_min=0.002, rho=7.0)]
        for cand in cands:
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
            sampler = edm_sampler(cand["steps"], **{k: cand[k] for k in ("solver", "sigma_max", "sigma_min", "rho")})
            out = sampler(denoiser, z, cond, None)[0].clamp(-1, 1)
            row = {**{k: cand[k] for k in ("solver", "steps", "sigma_max", "sigma_min", "rho")},
                   "mse": float(((out - x) ** 2).mean()), "high_freq": high_frequency(out, c), "r": pixel_r(out, x)}
            rows["samplers"].append(row)
            print(f"| {row['solver']} | {row['steps']} | {row['sigma_max']:g} | {row['sigma_min']:g} | {row['rho']:g} | "
                  f"{row['mse']:.4f} | {row['high_freq']:.4f} | {row['r']:.3f} |", flush=True)
    res = {"args": vars(args), "real_high_freq": real_hf, **rows, "seconds": time.time() - t0}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
