"""In-memory tensor data for training: one tensor per field, batches gathered by index."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["TensorDictDataset", "make_loader"]


class TensorDictDataset(Dataset):
    """Rows of several aligned tensors; a batch is gathered with one indexing op per field.

    ``DataLoader`` calls :meth:`__getitems__` with the whole index list of a batch, so a
    batch costs one gather instead of ``batch_size`` Python calls.

    Parameters
    ----------
    tensors
        ``{field: tensor}``, all with the same number of rows.

    Examples
    --------
    >>> ds = bd.train.TensorDictDataset({"x": torch.randn(100, 8), "cond": torch.randn(100, 16)})
    >>> len(ds), ds[0]["x"].shape
    (100, torch.Size([8]))
    >>> ds.__getitems__([0, 5, 7])["cond"].shape          # a whole batch in one gather
    torch.Size([3, 16])
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        if not tensors:
            raise ValueError("No tensors given.")
        lengths = {k: len(v) for k, v in tensors.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"Tensors have different numbers of rows: {lengths}.")
        self.tensors = dict(tensors)
        self.n = next(iter(lengths.values()))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}

    def __getitems__(self, idx: Sequence[int]) -> dict[str, torch.Tensor]:
        index = torch.as_tensor(idx, dtype=torch.long)
        return {k: v[index] for k, v in self.tensors.items()}


def _identity(batch):
    return batch


def make_loader(
    tensors: Mapping[str, torch.Tensor], batch_size: int, shuffle: bool, drop_last: bool = False
) -> DataLoader:
    """A DataLoader over :class:`TensorDictDataset` (Lightning shards it under DDP).

    Parameters
    ----------
    tensors
        ``{field: tensor}``, all with the same number of rows.
    batch_size
        Rows per batch (capped at the number of rows).
    shuffle
        Shuffle the rows every epoch.
    drop_last
        Drop the last, incomplete batch.

    Examples
    --------
    >>> loader = bd.train.make_loader({"x": torch.randn(100, 8)}, batch_size=32, shuffle=True)
    >>> [b["x"].shape[0] for b in loader]
    [32, 32, 32, 4]
    """
    ds = TensorDictDataset(tensors)
    return DataLoader(
        ds, batch_size=min(batch_size, len(ds)), shuffle=shuffle, drop_last=drop_last, collate_fn=_identity
    )
