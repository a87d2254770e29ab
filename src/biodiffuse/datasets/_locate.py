"""Where the shared data sets are looked for (one place for every loader).

A data set of kind ``kind`` (``citeseq``, ``imaging``, ``spatial``, ``tcga``) is searched in
``$BIODIFFUSE_DATA_DIR/<kind>``, ``$BIODIFFUSE_DATA_DIR``, then ``../shared/data/<kind>``
relative to the working directory and to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATA_DIR_ENV", "repo_root", "candidate_dirs", "locate_file", "locate_dir"]

DATA_DIR_ENV = "BIODIFFUSE_DATA_DIR"


def repo_root() -> Path | None:
    """The repository root for an editable install from a src layout, else None."""
    here = Path(__file__).resolve()
    # src/biodiffuse/datasets/_locate.py -> the repository root is the parent of src/.
    return here.parents[3] if here.parents[2].name == "src" else None


def candidate_dirs(kind: str) -> list[Path]:
    """The folders searched for data sets of ``kind``, in order."""
    dirs: list[Path] = []
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        dirs += [Path(env).expanduser() / kind, Path(env).expanduser()]
    dirs.append(Path.cwd() / ".." / "shared" / "data" / kind)
    root = repo_root()
    if root is not None:
        dirs.append(root / ".." / "shared" / "data" / kind)
    return dirs


def _not_found(what: str, tried: list[Path], kind: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found. Looked in: {', '.join(str(t.resolve()) for t in tried)}. Pass path=..., or set "
        f"{DATA_DIR_ENV} to the shared data folder (the one holding {kind}/)."
    )


def locate_file(kind: str, filename: str, path: str | os.PathLike | None = None) -> Path:
    """``filename``: in / at ``path`` if given, else in the first candidate folder holding it."""
    if path is not None:
        p = Path(path).expanduser()
        target = p / filename if p.is_dir() else p
        if not target.is_file():
            raise FileNotFoundError(f"{filename} not found at {target} (from path={os.fspath(path)!r}).")
        return target
    tried = [d / filename for d in candidate_dirs(kind)]
    for target in tried:
        if target.is_file():
            return target.resolve()
    raise _not_found(filename, tried, kind)


def locate_dir(kind: str, name: str, path: str | os.PathLike | None = None) -> Path:
    """The folder of data set ``name``: ``path`` if given, else the first candidate holding it."""
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_dir():
            raise FileNotFoundError(f"{p} is not a folder (from path={os.fspath(path)!r}).")
        return p
    tried = [d / name for d in candidate_dirs(kind)]
    for d in tried:
        if d.is_dir():
            return d.resolve()
    raise _not_found(f"Data set folder {name!r}", tried, kind)
