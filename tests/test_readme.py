"""Every ```python block of the README runs as written, in order, in one namespace (on the
bundled data and ../shared/data), with training cut to one epoch so the suite stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def readme_blocks() -> list[str]:
    return BLOCK.findall((ROOT / "README.md").read_text())


def test_readme_has_the_model_blocks():
    text = "\n".join(readme_blocks())
    for name in ("MCD", "SpaDiT", "CoherentDenoising", "GeneFlow", "StainDiffuser"):
        assert f"bd.models.{name}" in text


@pytest.mark.slow
def test_readme_blocks_run(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import biodiffuse as bd
    from biodiffuse.datasets._locate import locate_dir

    try:
        locate_dir("staining", "hemit")
    except FileNotFoundError:
        pytest.skip("../shared/data not found (set BIODIFFUSE_DATA_DIR)")
    train = bd.models.base.BaseModel.train

    def one_epoch(self, *args, **kwargs):
        return train(self, *args, **{**kwargs, "max_epochs": 1})

    monkeypatch.setattr(bd.models.base.BaseModel, "train", one_epoch)
    monkeypatch.chdir(tmp_path)  # save("mcd/") and friends write here
    namespace: dict = {}
    for i, block in enumerate(readme_blocks()):
        try:
            exec(compile(block, f"README.md block {i + 1}", "exec"), namespace)
        except Exception as exc:  # name the block that broke
            raise AssertionError(f"README block {i + 1} failed: {type(exc).__name__}: {exc}\n{block}") from exc
    # what the last blocks promise is there
    assert "counterfactual_variance_protein" in namespace["mdata_test"].obs
    assert "GeneFlow_importance" in namespace["sdata"].tables["table"].var
    assert set(namespace["out"]) == {"mihc_StainDiffuser", "mihc_StainDiffuser_seg"}
