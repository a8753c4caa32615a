"""DataOrder: the sample stream as a pure function of the step, split by rank, grouped by length."""

from __future__ import annotations

import pytest
import torch

from omnivision.train.data_order import DataOrder


def _windows(order: DataOrder, n_windows: int, window: int) -> list[list[int]]:
    return [order.indices(s, 0, 0, window, 1, 1) for s in range(n_windows)]


def test_data_order_is_a_pure_function_of_the_step_and_splits_by_rank():
    order = DataOrder(10, seed=3)
    single = [order.indices(s, m, 0, 4, 2, 1) for s in range(5) for m in range(2)]
    split = [order.indices(s, m, 0, 2, 2, 2) + order.indices(s, m, 1, 2, 2, 2)
             for s in range(5) for m in range(2)]
    assert single == split
    stream = [i for batch in single for i in batch]  # 40 positions = 4 epochs of 10
    for e in range(4):
        expected = torch.randperm(10, generator=torch.Generator().manual_seed(3 + e)).tolist()
        assert stream[10 * e: 10 * (e + 1)] == expected
    assert DataOrder(10, seed=3).indices(3, 1, 0, 4, 2, 1) == single[7]


def test_grouping_reads_each_sample_once_an_epoch_in_windows_of_similar_length():
    n, window = 515, 8  # 515 is no multiple of 8: later epochs start inside a window
    lengths = torch.randint(1, 1000, (n,), generator=torch.Generator().manual_seed(0)).tolist()
    grouped = DataOrder(n, seed=5, lengths=lengths, group=8, window=window)
    plain = DataOrder(n, seed=5)
    epochs = 4
    stream = [i for w in _windows(grouped, epochs * n // window, window) for i in w]
    for e in range(epochs - 1):
        assert sorted(stream[e * n:(e + 1) * n]) == list(range(n))

    def spread(order):  # mean (longest - shortest) of a window
        ws = _windows(order, epochs * n // window, window)
        return sum(max(lengths[i] for i in w) - min(lengths[i] for i in w) for w in ws) / len(ws)

    assert spread(grouped) < 0.35 * spread(plain)
    # within each run of 8 windows the lengths are not in order over the steps: no curriculum
    means = [sum(lengths[i] for i in w) / window for w in _windows(grouped, 64, window)]
    runs = [means[k:k + 8] for k in range(0, 64, 8)]
    assert sum(r == sorted(r) or r == sorted(r, reverse=True) for r in runs) <= 1


def test_grouping_keeps_the_rank_split_and_refuses_another_window():
    lengths = list(range(37, 0, -1))
    order = DataOrder(37, seed=1, lengths=lengths, group=2, window=4)
    single = [order.indices(s, 0, 0, 4, 1, 1) for s in range(30)]
    split = [order.indices(s, 0, 0, 2, 1, 2) + order.indices(s, 0, 1, 2, 1, 2) for s in range(30)]
    assert single == split
    with pytest.raises(ValueError, match="windows of 4 samples, asked for 1 x 8"):
        order.indices(0, 0, 0, 8, 1, 1)
    with pytest.raises(ValueError, match="one length per sample"):
        DataOrder(37, seed=1, lengths=lengths[:-1], group=2, window=4)


def test_grouping_is_the_same_order_after_a_resume_and_leaves_small_data_sets_ungrouped():
    lengths = [7, 3, 9, 1, 4, 8, 2, 6, 5, 10, 12, 11, 0, 13, 15, 14, 16, 18, 17, 19]
    order = DataOrder(20, seed=2, lengths=lengths, group=3, window=4)
    stream = [order.indices(s, 0, 0, 4, 1, 1) for s in range(40)]  # 8 epochs of 20
    fresh = DataOrder(20, seed=2, lengths=lengths, group=3, window=4)  # a resumed run's
    assert [fresh.indices(s, 0, 0, 4, 1, 1) for s in (37, 12, 25)] == [stream[37], stream[12], stream[25]]
    flat = [i for w in stream for i in w]
    assert all(sorted(flat[20 * e:20 * (e + 1)]) == list(range(20)) for e in range(8))
    tiny = DataOrder(5, seed=2, lengths=[5, 1, 4, 2, 3], group=2, window=8)  # 5 < one window
    flat = [i for s in range(5) for i in tiny.indices(s, 0, 0, 8, 1, 1)]
    plain = [torch.randperm(5, generator=torch.Generator().manual_seed(2 + e)).tolist() for e in range(8)]
    assert flat == [i for epoch in plain for i in epoch]
    with pytest.raises(ValueError, match="group must be >= 0"):
        DataOrder(5, seed=2, group=-1)
