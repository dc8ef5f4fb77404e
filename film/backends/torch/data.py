"""A torch ``Dataset``/``DataLoader`` over the framework-free H5 reader, in the shared epoch order.

The sampler yields ``film.common.training.epoch_order(seed, epoch)``, so this loader, the Jittor adapter
and ``film train`` see the same samples in the same order for the same seed (call ``set_epoch``)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from film.common.data import H5Pairs
from film.common.training import epoch_order, epoch_size


class H5Dataset(Dataset):
    """Items: (imageA (1,H,W), imageB (1,H,W), text (L,D)) float32 tensors and the sample name."""

    def __init__(self, path: str):
        self.pairs = H5Pairs(path)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, idx: int):
        a, b, t, name = self.pairs[idx]
        return torch.from_numpy(a), torch.from_numpy(b), torch.from_numpy(t.reshape(t.shape[-2:])), name


class EpochSampler(Sampler):
    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        self.n, self.batch_size, self.seed, self.shuffle, self.drop_last = n, batch_size, seed, shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        return iter(epoch_order(self.n, self.batch_size, self.seed, self.epoch, self.shuffle, self.drop_last))

    def __len__(self) -> int:
        return epoch_size(self.n, self.batch_size, self.drop_last)


def make_loader(
    path: str, batch_size: int = 2, seed: int = 0, shuffle: bool = True, drop_last: bool = True, num_workers: int = 0
) -> DataLoader:
    """A DataLoader with the official batching (shuffle, drop_last); ``loader.sampler.set_epoch(e)`` per epoch."""
    ds = H5Dataset(path)
    sampler = EpochSampler(len(ds), batch_size, seed, shuffle, drop_last)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, drop_last=drop_last, num_workers=num_workers)
