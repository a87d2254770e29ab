"""Fetch data files (local path or URL) with a sha256 check, and read h5ad files.

No pickle is used anywhere: h5ad is HDF5 read by :func:`anndata.read_h5ad`, which never
executes code from the file.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from anndata import AnnData

__all__ = ["fetch_file", "read_h5ad_safely", "sha256sum"]

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def sha256sum(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 digest of a file, read in chunks.

    Parameters
    ----------
    path
        File to hash.
    chunk_size
        Bytes read at a time.

    Returns
    -------
    str
        64 lowercase hex characters.

    Examples
    --------
    >>> digest = bd.datasets.sha256sum("data/pbmc.h5ad")
    >>> len(digest)
    64
    >>> path = bd.datasets.fetch_file("data/pbmc.h5ad", sha256=digest)
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not isinstance(sha256, str):
        raise ValueError(f"sha256 must be a hex string or None, got {type(sha256).__name__}.")
    digest = sha256.lower().removeprefix("sha256:")
    if not _SHA256_RE.match(digest):
        raise ValueError(f"sha256 must be 64 hex characters, got {sha256!r}.")
    return digest


def fetch_file(
    source: str | os.PathLike,
    sha256: str | None,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Return a local path to ``source``, checked against ``sha256``.

    Parameters
    ----------
    source
        A local file path, or an ``http://`` / ``https://`` URL.
    sha256
        Expected hex sha256 of the file (an optional ``"sha256:"`` prefix is accepted), or
        ``None`` to skip the check (not recommended for URLs).
    cache_dir
        Where downloads go; default ``pooch.os_cache("biodiffuse")``. Unused for local paths.

    Returns
    -------
    pathlib.Path
        The local file (the downloaded copy for a URL).

    Raises
    ------
    FileNotFoundError
        If a local ``source`` does not exist.
    ValueError
        If the file's sha256 does not match, or ``sha256`` is malformed.

    Examples
    --------
    >>> url = "https://example.org/data/pbmc.h5ad"
    >>> path = bd.datasets.fetch_file(url, sha256=expected_sha256)   # downloaded once, then cached
    >>> adata = bd.datasets.read_h5ad_safely(path)
    >>> bd.datasets.fetch_file("data/pbmc.h5ad", sha256=None)    # a local file, unchecked
    """
    digest = _check_sha256(sha256)
    src = os.fspath(source)
    if src.startswith(("http://", "https://")):
        import pooch

        path = cache_dir if cache_dir is not None else pooch.os_cache("biodiffuse")
        known_hash = f"sha256:{digest}" if digest is not None else None
        return Path(pooch.retrieve(src, known_hash=known_hash, path=path, progressbar=False))
    path = Path(src).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"Data file not found: {path}")
    if digest is not None:
        got = sha256sum(path)
        if got != digest:
            raise ValueError(
                f"sha256 mismatch for {path}: expected {digest}, got {got}. "
                "The file is corrupted or a different version; replace it with the original."
            )
    return path


def read_h5ad_safely(path: str | os.PathLike) -> AnnData:
    """Read an ``.h5ad`` file with :func:`anndata.read_h5ad` (HDF5; never executes code).

    Parameters
    ----------
    path
        The ``.h5ad`` file.

    Returns
    -------
    anndata.AnnData
        Fully loaded in memory (not backed).

    Examples
    --------
    >>> adata = bd.datasets.read_h5ad_safely("data/pbmc.h5ad")
    >>> adata = bd.datasets.read_h5ad_safely(bd.datasets.fetch_file(url, sha256=expected_sha256))
    """
    import anndata

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"h5ad file not found: {path}")
    return anndata.read_h5ad(path)
