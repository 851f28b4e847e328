"""Grain's shuffle order, an epoch at a time (avemo/data/shuffle.py): index for index the same
as Grain's own `index_shuffle` and `MapDataset.shuffle`, so training order and resumes do not
change."""

import grain
import numpy as np
import pytest
from grain._src.python.experimental.index_shuffle.python import index_shuffle_module

from avemo.data.shuffle import EpochShuffleMapDataset, epoch_permutation


@pytest.mark.parametrize("n", [1, 2, 3, 50, 330, 1000, 65536, 70001])
@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1])
def test_permutation_equals_grain_index_shuffle(n, seed):
    perm = epoch_permutation(n, seed)
    idx = range(n) if n <= 1000 else np.random.default_rng(seed % 97).integers(0, n, 200)
    want = [index_shuffle_module.index_shuffle(int(i), max_index=n - 1, seed=seed, rounds=4)
            if n > 1 else 0 for i in idx]  # fmt: skip
    assert [int(perm[i]) for i in idx] == want
    assert np.array_equal(np.sort(perm), np.arange(n))  # a permutation


def test_dataset_equals_grain_shuffle_over_epochs_and_repeats():
    source = grain.MapDataset.source(list(range(37)))
    ours = EpochShuffleMapDataset(source, 7).repeat()
    grains = source.shuffle(seed=7).repeat()
    assert [ours[i] for i in range(37 * 3 + 5)] == [grains[i] for i in range(37 * 3 + 5)]
    first = next(iter(ours.batch(4).to_iter_dataset()))  # through Grain's reading machinery
    assert first.tolist() == [grains[i] for i in range(4)]


def test_where_grain_truncates_the_index_its_own_walk_is_used():
    """n - 1 = 2^16 does not fit Grain's 16-bit domain: no precomputed epoch, Grain answers."""
    assert epoch_permutation(65537, 3) is None
    source = grain.MapDataset.source(range(65537))
    ours, grains = EpochShuffleMapDataset(source, 3), source.shuffle(seed=3)
    assert [ours[i] for i in (0, 1, 65536)] == [grains[i] for i in (0, 1, 65536)]


def test_bad_seed_is_rejected():
    with pytest.raises(ValueError, match="seed"):
        EpochShuffleMapDataset(grain.MapDataset.source([1, 2]), -1)
