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


def _folder_imports() -> tuple[dict[str, set[str]], list[tuple[str, str]]]:
    """Relative imports between the package's folders, and private names imported across them."""
    import ast
    import pathlib

    src = pathlib.Path(bd.__file__).parent
    edges: dict[str, set[str]] = {}
    private = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).parts
        folder = rel[0] if len(rel) > 1 else "(top)"
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level > 0):
                continue
            base = list(rel[:-1])
            base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
            target = base + (node.module.split(".") if node.module else [])
            tfolder = target[0] if target else "(top)"
            if tfolder in (folder, "(top)"):
                continue
            edges.setdefault(folder, set()).add(tfolder)
            private += [(str(path.relative_to(src)), a.name) for a in node.names if a.name.startswith("_")]
            private += [(str(path.relative_to(src)), node.module) for m in target[1:] if m.startswith("_") and m != "__init__"]
    return edges, private


def test_no_import_circles_between_folders_and_no_private_names() -> None:
    edges, private = _folder_imports()
    assert not private, private

    def reaches(a: str, b: str, seen: set[str]) -> bool:
        for n in edges.get(a, ()):
            if n == b or (n not in seen and reaches(n, b, seen | {n})):
                return True
        return False

    circles = sorted(f for f in edges if reaches(f, f, set()))
    assert not circles, {f: sorted(edges[f]) for f in circles}
    # arrows run downward: nothing below the models imports them
    assert not [f for f, to in edges.items() if "models" in to and f != "models"]
