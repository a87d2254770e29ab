"""Pieces of the MIBI imaging driver (benchmarks/imaging.py) that score MCD's image uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

imaging = pytest.importorskip("imaging")


def test_error_uncertainty_is_positive_when_the_spread_tracks_the_error_and_negative_when_it_does_not():
    rng = np.random.default_rng(0)
    c, h, w, tile = 3, 32, 32, 8
    sd = np.repeat(np.repeat(rng.uniform(0.1, 2.0, size=(c, h // tile, w // tile)), tile, axis=1), tile, axis=2)
    mean = rng.normal(size=(c, h, w))
    truth = mean + sd * rng.normal(size=(c, h, w))  # errors drawn with the predicted spread
    test = np.ones((h, w), bool)
    test[:tile, :] = False  # one row of tiles is not in the test region
    held = np.array([0, 2])
    tiles = imaging._tile_means(sd, test, held, tile)
    assert tiles.shape == (12, 2)  # 3 x 4 test tiles, two channels
    good = imaging._error_uncertainty(truth, mean, sd**2, test, held, tile)
    flipped = imaging._error_uncertainty(truth, mean, (2.1 - sd) ** 2, test, held, tile)
    assert good > 0.5 and flipped < -0.5


def test_distribution_rows_reward_calibrated_draws():
    rng = np.random.default_rng(1)
    mu = rng.normal(size=(400, 2))
    y = mu + rng.normal(size=mu.shape)
    draws = {"calibrated": mu[:, None, :] + rng.normal(size=(400, 20, 2)),
             "too narrow": mu[:, None, :] + 0.2 * rng.normal(size=(400, 20, 2))}
    rows = {r["method"]: r for r in imaging._distribution_rows(y, draws)}
    assert rows["calibrated"]["crps"] < rows["too narrow"]["crps"]
    # coverage of the distribution's central 90 % interval (PIT): nominal for calibrated draws,
    # whatever their number (the span of 20 draws would cover about 0.82)
    assert 0.85 < rows["calibrated"]["coverage90"] < 0.95 and rows["too narrow"]["coverage90"] < 0.4
    table = imaging.format_distribution(list(rows.values()))
    assert "| calibrated |" in table and "/ 0." in table


def test_sampler_argument_reads_the_four_settings_and_rejects_others():
    from _cli import sampler_arg  # the drivers' shared command-line helpers (imaging, spatial_genes)

    assert sampler_arg("euler,80,0.002,3") == dict(solver="euler", sigma_max=80.0, sigma_min=0.002, rho=3.0)
    assert sampler_arg(None) is None
    with pytest.raises(SystemExit, match="SOLVER"):
        sampler_arg("euler,80")
