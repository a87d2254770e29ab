"""The image-throughput driver (benchmarks/image_throughput.py): its step timer counts every
optimiser step and every within-epoch wait, its memory probe sees what a block allocates and not
what was there before, and a tiny run of both models writes the tables."""

from __future__ import annotations

import numpy as np
import pytest

image_throughput = pytest.importorskip("image_throughput")


def test_peak_memory_sees_the_block_and_not_what_was_there_before():
    before = np.ones(40 * 2**20 // 8)  # 40 MiB live before the block: not counted
    with image_throughput.PeakMemory(cuda=False, interval=0.002) as mem:
        block = np.ones(120 * 2**20 // 8)  # 120 MiB, touched, then freed inside the block
        block[::512] += 1.0
        import time

        time.sleep(0.05)  # let the sampler see it
        del block
    assert 100 <= mem.peak_mib <= 150, mem.peak_mib
    with image_throughput.PeakMemory(cuda=False, interval=0.002) as idle:
        idle_sum = float(before[:10].sum())
    assert idle_sum == 10.0 and idle.peak_mib < 20, idle.peak_mib


def test_step_timer_counts_steps_and_only_within_epoch_waits():
    class Module:  # what the timer reads of the LightningModule
        device = type("D", (), {"type": "cpu"})()

    timer = image_throughput.StepTimer()
    epochs, batches = 3, 4
    for _ in range(epochs):
        for b in range(batches):
            timer.on_train_batch_start(None, Module(), None, b)
            timer.on_train_batch_end(None, Module(), None, None, b)
    assert len(timer.steps) == epochs * batches
    assert len(timer.waits) == epochs * (batches - 1)  # an epoch's first wait would hold validation
    s = timer.summary(batch_size=8, warmup=2)
    assert s["steps_timed"] == epochs * batches - 2 and 0.0 <= s["wait_share"] <= 1.0
    assert s["train_tiles_per_s"] == pytest.approx(8 / (s["step_s"] + s["wait_s"]))
    with pytest.raises(SystemExit, match="raise --train-steps"):
        timer.summary(batch_size=8, warmup=epochs * batches)


def test_tiny_run_of_both_models_writes_the_tables(tmp_path):
    res = image_throughput.main([
        "--data", "synthetic", "--tile-size", "16", "--crop", "32", "--model-channels", "8", "--train-steps", "4",
        "--warmup", "1", "--gf-cells", "64", "--sd-tiles", "40", "--generate", "8", "32", "100", "--predict-sides", "1", "2",
        "--threads", "1", "--out", str(tmp_path / "t"),
    ])
    gf, sd = res["models"]
    assert gf["model"] == "GeneFlow" and sd["model"] == "StainDiffuser"
    for r in (gf, sd):
        assert r["steps_timed"] >= 4 and r["train_tiles_per_s"] > 0 and r["params"] > 0
    assert sd["wait_s"] > 0  # 30 training crops of batch 16: two batches per epoch, so waits are timed
    assert [g["tiles"] for g in gf["generation"]] == [8, 32, 100]  # synthetic data: cells for the largest size
    assert [g["crops"] for g in sd["generation"]] == [1, 9]  # overlap 0.25: a 64-px image is 3 x 3 crops of 32
    assert gf["rows"] == 100 and sd["rows"] == 40  # the cells / tiles the data hold
    assert gf["evals_per_tile"] == 8 and sd["evals_per_tile"] == 5
    md = (tmp_path / "t.md").read_text()
    assert "| GeneFlow | 16 |" in md and "| StainDiffuser | 64 px image | 9 | 5 |" in md
    for r in (gf, sd):  # the steps actually timed (whole epochs), not the --train-steps asked for
        assert f"| {r['batch_size']} | {r['steps_timed']} | {r['train_tiles_per_s']:.1f} |" in md
    assert (tmp_path / "t.json").exists()
