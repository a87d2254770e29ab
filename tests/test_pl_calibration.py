"""The calibration plot: PIT histogram and coverage curve, one line per method, from the metrics."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import biodiffuse as bd  # noqa: E402


def test_calibration_plot_draws_the_pit_histogram_and_coverage_of_each_method():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(2000, 3))
    good, narrow = rng.normal(size=(2000, 10, 3)), 0.3 * rng.normal(size=(2000, 10, 3))
    fig = bd.pl.calibration(y, {"calibrated": good, "too narrow": narrow}, levels=(0.5, 0.8, 0.9), bins=5)
    ax_pit, ax_cov = fig.axes
    hist = [p for p in ax_pit.patches if p.get_label() in ("calibrated", "too narrow")]
    heights = {p.get_label(): p.get_data()[0] for p in hist}
    expected = np.histogram(bd.metrics.pit_values(y, good).ravel(), bins=np.linspace(0, 1, 6), density=True)[0]
    np.testing.assert_allclose(heights["calibrated"], expected)
    assert np.abs(heights["calibrated"] - 1).max() < 0.1  # flat
    assert heights["too narrow"][0] > 1.7 and heights["too narrow"][-1] > 1.7 and heights["too narrow"][2] < 0.5  # U-shaped
    lines = {ln.get_label(): ln for ln in ax_cov.get_lines()}
    cov = bd.metrics.interval_coverage(y, narrow, levels=(0.5, 0.8, 0.9)).mean(axis=0)
    np.testing.assert_allclose(lines["too narrow"].get_ydata(), cov.to_numpy())
    np.testing.assert_allclose(lines["calibrated"].get_ydata(), [0.5, 0.8, 0.9], atol=0.02)
    # one array: labelled "draws"
    single = bd.pl.calibration(y, good)
    assert "draws" in [ln.get_label() for ln in single.axes[1].get_lines()]
    plt.close("all")


def test_calibration_plot_bad_inputs():
    y = np.zeros((5, 2))
    with pytest.raises(ValueError, match="bins"):
        bd.pl.calibration(y, np.zeros((5, 4, 2)), bins=1)
    with pytest.raises(ValueError, match="empty"):
        bd.pl.calibration(y, {})
    with pytest.raises(ValueError, match="do not match"):
        bd.pl.calibration(y, np.zeros((5, 4, 3)))
    plt.close("all")
