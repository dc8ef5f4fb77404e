"""The torch DataLoader and the Jittor Dataset over the H5 reader yield the same samples in the same
order as each other and as the training loop (film.common.training), for the same seed and epoch."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from film.common.data import H5Pairs
from film.common.training import epoch_batches, load_batch


@pytest.fixture
def h5(tmp_path):
    p = tmp_path / "d.h5"
    rng = np.random.default_rng(0)
    with h5py.File(p, "w") as f:
        ga, gb, gt = f.create_group("imageA"), f.create_group("imageB"), f.create_group("text")
        for i in range(7):  # odd count: drop_last matters
            ga.create_dataset(f"n{i:02d}", data=rng.random((1, 6, 5), dtype=np.float32))
            gb.create_dataset(f"n{i:02d}", data=rng.random((1, 6, 5), dtype=np.float32))
            gt.create_dataset(f"n{i:02d}", data=rng.standard_normal((1, 4, 8)).astype(np.float32))
    return str(p)


def _reference(h5, seed, epoch):
    data = H5Pairs(h5)
    return [load_batch(data, idx) for idx in epoch_batches(len(data), 2, seed, epoch)]


def _check(batches, ref):
    assert len(batches) == len(ref) == 3
    for (a, b, t, names), (ra, rb, rt, rnames) in zip(batches, ref):
        assert list(names) == rnames
        np.testing.assert_array_equal(a, ra)
        np.testing.assert_array_equal(b, rb)
        np.testing.assert_array_equal(t, rt)


@pytest.mark.parametrize("epoch", [0, 1])
def test_torch_loader_order(tb, h5, epoch):
    from film.backends.torch.data import make_loader

    loader = make_loader(h5, batch_size=2, seed=5)
    loader.sampler.set_epoch(epoch)
    got = [(a.numpy(), b.numpy(), t.numpy(), n) for a, b, t, n in loader]
    _check(got, _reference(h5, 5, epoch))


@pytest.mark.parametrize("epoch", [0, 1])
def test_jittor_dataset_order(jb, h5, epoch):
    from film.backends.jittor.data import H5Dataset

    ds = H5Dataset(h5, batch_size=2, seed=5)
    ds.set_epoch(epoch)
    got = [(a.numpy(), b.numpy(), t.numpy(), n) for a, b, t, n in ds]
    _check(got, _reference(h5, 5, epoch))


def test_order_depends_on_epoch_and_seed(h5):
    names = [r[3] for r in _reference(h5, 5, 0)]
    assert names != [r[3] for r in _reference(h5, 5, 1)]
    assert names != [r[3] for r in _reference(h5, 6, 0)]
