"""A Jittor ``Dataset`` over the framework-free H5 reader, in the shared epoch order.

Its sampler yields ``film.common.training.epoch_order(seed, epoch)``, the same order as the torch
adapter and ``film train`` for the same seed (call ``set_epoch``)."""

from __future__ import annotations

from film.backends.jittor.configured import jt
from film.common.data import H5Pairs
from film.common.training import epoch_order, epoch_size

Dataset = jt.dataset.Dataset


class _EpochSampler:
    def __init__(self, ds: H5Dataset):
        self.ds = ds

    def __iter__(self):
        d = self.ds
        return iter(epoch_order(len(d.pairs), d.batch_size, d.seed, d.epoch, d.order_shuffle, d.drop_last))

    def __len__(self) -> int:
        return epoch_size(len(self.ds.pairs), self.ds.batch_size, self.ds.drop_last)


class H5Dataset(Dataset):
    """Batches: (imageA (B,1,H,W), imageB, text (B,L,D)) float32 Vars and the list of sample names."""

    def __init__(self, path: str, batch_size: int = 2, seed: int = 0, shuffle: bool = True, drop_last: bool = True):
        super().__init__()
        self.pairs = H5Pairs(path)
        self.seed, self.epoch, self.order_shuffle = seed, 0, shuffle
        # Jittor's own shuffle uses its own RNG; the order comes from our sampler instead.
        self.set_attrs(batch_size=batch_size, shuffle=False, drop_last=drop_last, total_len=len(self.pairs))
        self.sampler = _EpochSampler(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, idx: int):
        a, b, t, name = self.pairs[idx]
        return a, b, t.reshape(t.shape[-2:]), name
