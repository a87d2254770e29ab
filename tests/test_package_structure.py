"""API conventions as a test (as scanpy's tests/test_package_structure.py): one train()
signature, task verbs with the data first and everything else keyword-only, the same
behaviour on an object never set up."""

from __future__ import annotations

import inspect

import pytest

import biodiffuse as bd
from biodiffuse.models.base import BaseModel

MODELS = [bd.models.MCD, bd.models.SpaDiT, bd.models.MultiConditionDiffusion, bd.models.CoherentDenoising]
VERBS = {"impute", "predict", "synthesize", "generate"}
VERB_KEYWORDS = {"indices", "batch_size", "n_samples", "steps", "seed", "key_added", "overwrite"}
DATA_NAMES = {"adata", "mdata", "sdata"}


def _verbs(model: type) -> list:
    return [getattr(model, v) for v in sorted(VERBS) if hasattr(model, v)]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_one_train_signature(model: type) -> None:
    assert model.train is BaseModel.train, f"{model.__name__} overrides train(); override _training_data instead"
    params = inspect.signature(BaseModel.train).parameters
    for name in ("max_epochs", "lr", "batch_size", "accelerator", "devices", "strategy", "precision", "seed", "callbacks", "ckpt_path"):
        assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, name


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_task_verbs_have_one_shape(model: type) -> None:
    verbs = _verbs(model)
    assert verbs, f"{model.__name__} has no task verb among {VERBS}"
    for verb in verbs:
        params = list(inspect.signature(verb).parameters.values())[1:]  # without self
        data = params[0]
        assert data.name in DATA_NAMES and data.default is None, f"{verb.__qualname__}: first argument {data.name}"
        assert data.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        rest = params[1:]
        loose = [p.name for p in rest if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        assert not loose, f"{verb.__qualname__}: not keyword-only: {loose}"
        names = {p.name for p in rest}
        assert VERB_KEYWORDS <= names, f"{verb.__qualname__} lacks {VERB_KEYWORDS - names}"
        by = {p.name: p for p in rest}
        assert by["overwrite"].default is False and by["key_added"].default is None
        assert by["indices"].default is None and by["batch_size"].default is None
        assert by["steps"].default == BaseModel._default_steps, f"{verb.__qualname__}: steps default"
        assert verb.__doc__ and "Parameters" in verb.__doc__


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_public_methods_take_data_positionally_and_the_rest_by_keyword(model: type) -> None:
    for name, fn in inspect.getmembers(model, predicate=lambda f: inspect.isfunction(f) or inspect.ismethod(f)):
        if name.startswith("_"):
            continue
        params = list(inspect.signature(fn).parameters.values())
        positional = [
            p.name for p in params
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.POSITIONAL_ONLY) and p.name not in ("self", "cls")
        ]
        bad = [p for p in positional if p not in DATA_NAMES | {"reference", "dir_path"}]
        assert not bad, f"{model.__name__}.{name}: positional {bad} (data first, the rest keyword-only)"


def test_every_public_function_has_a_docstring() -> None:
    import pkgutil
    import importlib

    missing = []
    for mod in pkgutil.walk_packages(bd.__path__, "biodiffuse."):
        if any(part.startswith("_") for part in mod.name.split(".")[1:]):
            continue
        m = importlib.import_module(mod.name)
        for name in getattr(m, "__all__", []):
            obj = getattr(m, name)
            if (inspect.isfunction(obj) or inspect.isclass(obj)) and not (obj.__doc__ or "").strip():
                missing.append(f"{mod.name}.{name}")
    assert not missing, missing


def test_nothing_imports_benchmarks() -> None:
    import pathlib

    src = pathlib.Path(bd.__file__).parent
    bad = [str(p) for p in src.rglob("*.py") if "benchmarks" in p.read_text() and "import" in p.read_text() and "from benchmarks" in p.read_text()]
    assert not bad
    assert not (src / "benchmarks").exists()
