"""WeightedDistributedSampler (lit_unlearn/data/samplers.py): shared weighted draws, sharding, resume."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DistributedSampler

from lit_unlearn.data.samplers import WeightedDistributedSampler

DATA = list(range(10))
WEIGHTS = [0.0, 1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 1.0, 3.0, 5.0]


def sampler(num_replicas: int = 1, rank: int = 0, data=DATA, **kw) -> WeightedDistributedSampler:
    return WeightedDistributedSampler(data, num_replicas=num_replicas, rank=rank, **kw)


def test_unweighted_is_a_shuffled_distributed_sampler():
    for rank in range(3):
        ours = sampler(3, rank, seed=4)
        ref = DistributedSampler(DATA, num_replicas=3, rank=rank, shuffle=True, seed=4)
        ours.set_epoch(2), ref.set_epoch(2)
        assert list(ours) == list(ref) and len(ours) == len(ref) == 4


def test_ranks_take_slices_of_the_single_replica_draw():
    s1 = sampler(1, 0, weights=WEIGHTS, seed=7)
    s1.set_epoch(3)
    full = list(s1)
    # the single-replica draw, computed independently
    gen = torch.Generator().manual_seed(7 + 3)
    expected = torch.multinomial(torch.tensor(WEIGHTS, dtype=torch.float64), 10, replacement=True, generator=gen)
    assert full == expected.tolist()
    ranks = [sampler(2, r, weights=WEIGHTS, seed=7) for r in range(2)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    assert [len(s) for s in ranks] == [5, 5]
    assert shards[0] == full[0::2] and shards[1] == full[1::2]
    assert sorted(shards[0] + shards[1]) == sorted(full)
    assert all(WEIGHTS[i] > 0 for i in full)  # zero-weight rows are never drawn


def test_padding_and_drop_last_sizes_follow_distributed_sampler():
    for drop_last in (False, True):
        ref = DistributedSampler(DATA, num_replicas=3, rank=0, drop_last=drop_last)
        shards = [list(sampler(3, r, weights=WEIGHTS, drop_last=drop_last)) for r in range(3)]
        assert all(len(s) == ref.num_samples for s in shards)  # 4 padded, 3 dropped


def test_same_epoch_same_draws_new_epoch_new_draws():
    a, b = sampler(weights=WEIGHTS), sampler(weights=WEIGHTS)
    a.set_epoch(1), b.set_epoch(1)
    assert list(a) == list(b) == list(a)
    first = list(a)
    a.set_epoch(2)
    assert list(a) != first
    assert list(sampler(weights=WEIGHTS, seed=1)) != list(sampler(weights=WEIGHTS, seed=2))


def test_empirical_frequencies_follow_weights():
    data = list(range(5))
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0])
    big = WeightedDistributedSampler(data * 20000, num_replicas=1, rank=0)  # 100k draws
    big.set_weights(weights.repeat(20000))
    counts = torch.bincount(torch.tensor(list(big)) % 5, minlength=5).double()
    freq = counts / counts.sum()
    torch.testing.assert_close(freq, (weights / weights.sum()).double(), atol=0.006, rtol=0)
    assert counts[4] == 0


def test_state_round_trip_resumes_the_same_draws():
    s = sampler(2, 1, weights=WEIGHTS, seed=11)
    s.set_epoch(5)
    state = s.state_dict()
    resumed = sampler(2, 1)  # fresh: no weights, seed 0, epoch 0
    resumed.load_state_dict(state)
    assert list(resumed) == list(s)
    assert resumed.epoch == 5 and resumed.seed == 11 and torch.equal(resumed.weights, s.weights)
    s.set_weights(None)
    fresh = sampler(2, 1, weights=WEIGHTS)
    fresh.load_state_dict(s.state_dict())
    assert fresh.weights is None and list(fresh) == list(s)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"epoch": 1})


@pytest.mark.parametrize("weights, message", [
    ([1.0] * 9, "9 entries"),
    ([1.0] * 9 + [-0.5], "non-negative"),
    ([1.0] * 9 + [float("nan")], "finite"),
    ([1.0] * 9 + [float("inf")], "finite"),
    ([0.0] * 10, "all be zero"),
])
def test_bad_weights_raise(weights, message):
    with pytest.raises(ValueError, match=message):
        sampler().set_weights(weights)
    with pytest.raises(ValueError, match=message):
        sampler(weights=weights)
