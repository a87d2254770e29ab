"""biodiffuse: conditional diffusion and flow models for biological data, scverse-style."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("biodiffuse")
except PackageNotFoundError:  # pragma: no cover - source tree without install
    __version__ = "0.0.0+unknown"

from ._settings import settings  # noqa: E402
from . import data, diffusion, metrics, models, nn, train  # noqa: E402

__all__ = ["settings", "baselines", "data", "datasets", "diffusion", "io", "metrics", "models", "nn", "pl", "tl", "train", "__version__"]


def __getattr__(name: str):
    # baselines, datasets, io, pl and tl import heavier dependencies (pooch, spatialdata, matplotlib, sklearn):
    # load on first use.
    if name in ("baselines", "datasets", "pl", "tl", "io"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
