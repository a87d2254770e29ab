"""Every public function and class of the API reference (docs/api.md) has a numpy docstring
with an ``Examples`` section and, when it takes parameters, a ``Parameters`` section.

"Public" = the names in each documented subpackage's ``__all__`` that are functions or
classes, plus the public methods of the model classes (``setup_anndata``, ``train``,
``impute``, ``predict``, ``generate``, ``save``, ``load``, ...). Only imports: no data, no
training.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Iterator
from typing import Any

import pytest

SUBPACKAGES = ("models", "datasets", "tl", "pl", "metrics", "baselines", "io", "data", "diffusion", "nn", "train")

# "models.X.method": {"Examples"} would excuse one item; keep it empty.
ALLOWED_MISSING: dict[str, set[str]] = {}


def _has_section(doc: str, name: str) -> bool:
    """A numpy section header: the name on its own line, underlined with dashes."""
    return re.search(rf"^[ \t]*{name}[ \t]*\n[ \t]*-{{{len(name)},}}[ \t]*$", doc, re.MULTILINE) is not None


def _takes_parameters(obj: Any) -> bool:
    if inspect.isclass(obj) and obj.__init__ is object.__init__ and obj.__new__ is object.__new__:
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return False
    params = [p for p in params if p.name not in ("self", "cls")]
    if inspect.isclass(obj) and issubclass(obj, BaseException):  # Exception(*args) is not a parameter list
        params = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return bool(params)


def _model_methods(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods of a model class, its own and those of package-internal bases (mixins,
    the private modality base); properties excluded. BaseModel's are checked on BaseModel."""
    from biodiffuse.models import BaseModel

    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("biodiffuse.") or (klass is BaseModel and cls is not BaseModel):
            continue
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in seen or isinstance(attr, property):
                continue
            if isinstance(attr, (classmethod, staticmethod)) or inspect.isfunction(attr):
                seen.add(name)
                yield name, getattr(cls, name)


def _public_items() -> Iterator[tuple[str, Any]]:
    for sub in SUBPACKAGES:
        mod = importlib.import_module(f"biodiffuse.{sub}")
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue  # constants (READ_CHUNK, METHODS, ...)
            yield f"{sub}.{name}", obj
            if sub == "models" and inspect.isclass(obj):
                for meth, fn in _model_methods(obj):
                    yield f"{sub}.{name}.{meth}", fn


def _missing_sections(obj: Any) -> set[str]:
    doc = inspect.cleandoc(obj.__doc__ or "")  # not inspect.getdoc: no docstring inherited from a base
    missing = set()
    if not _has_section(doc, "Examples"):
        missing.add("Examples")
    if _takes_parameters(obj) and not _has_section(doc, "Parameters"):
        missing.add("Parameters")
    return missing


@pytest.mark.parametrize("sub", SUBPACKAGES)
def test_subpackage_is_importable_with_all(sub: str) -> None:
    mod = importlib.import_module(f"biodiffuse.{sub}")
    assert mod.__all__, f"biodiffuse.{sub} has an empty __all__"
    absent = [n for n in mod.__all__ if not hasattr(mod, n)]
    assert not absent, f"biodiffuse.{sub}.__all__ names missing attributes: {absent}"


def test_public_docstrings_have_parameters_and_examples() -> None:
    items = list(_public_items())
    assert len(items) > 200, f"only {len(items)} public items found: is __all__ complete?"
    offenders = []
    for path, obj in items:
        missing = _missing_sections(obj) - ALLOWED_MISSING.get(path, set())
        if missing:
            offenders.append(f"{path}: missing {' and '.join(sorted(missing))}")
    assert not offenders, (
        f"{len(offenders)} public item(s) lack numpy docstring sections:\n  " + "\n  ".join(offenders)
    )


def test_section_detection() -> None:
    def documented(x: int) -> None:
        """Summary.

        Parameters
        ----------
        x
            A number.

        Examples
        --------
        >>> documented(1)
        """

    def bare(x: int) -> None:
        """Summary mentioning Examples and Parameters without sections."""

    assert _missing_sections(documented) == set()
    assert _missing_sections(bare) == {"Examples", "Parameters"}
    assert _missing_sections(lambda: None) == {"Examples"}
