"""Camera batches: every camera once per epoch, distinct within a batch, seeded, resumable."""

from __future__ import annotations

import pytest

from grendel_py.train.sampler import CameraSampler


@pytest.mark.parametrize("n, batch", [(10, 1), (10, 3), (7, 7), (9, 4)])
def test_epochs_cover_every_camera_and_batches_are_distinct(n: int, batch: int) -> None:
    sampler = CameraSampler(n, batch, seed=3)
    drawn = [sampler.next_batch() for _ in range(3 * n)]  # exactly 3 * batch epochs
    assert all(len(set(b)) == batch for b in drawn)
    flat = [i for b in drawn for i in b]
    assert [flat.count(i) for i in range(n)] == [3 * batch] * n
    if batch == 1:  # no boundary crossing: each epoch is one permutation
        assert all(sorted(flat[e * n : (e + 1) * n]) == list(range(n)) for e in range(3))


def test_same_seed_same_batches_and_resume() -> None:
    a, b = CameraSampler(12, 5, seed=1), CameraSampler(12, 5, seed=1)
    assert [a.next_batch() for _ in range(7)] == [b.next_batch() for _ in range(7)]
    state = a.state_dict()
    expected = [a.next_batch() for _ in range(6)]
    c = CameraSampler(12, 5, seed=1)
    c.load_state_dict(state)
    assert [c.next_batch() for _ in range(6)] == expected
    assert CameraSampler(12, 5, seed=2).next_batch() != CameraSampler(12, 5, seed=1).next_batch()


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        CameraSampler(0, 1, 0)
    with pytest.raises(ValueError, match="batch size 5"):
        CameraSampler(4, 5, 0)


def test_owner_aware_batches_spread_over_ranks_and_keep_epochs() -> None:
    import numpy as np

    n, w = 40, 4
    affinity = np.eye(w)[np.arange(n) % w]  # camera k is all on rank k % 4
    sampler = CameraSampler(n, w, seed=5)
    sampler.set_affinity(affinity)
    batches = [sampler.next_batch() for _ in range(n // w)]  # one epoch
    assert sorted(i for b in batches for i in b) == list(range(n))
    spread = [len({i % w for i in b}) for b in batches]
    plain = CameraSampler(n, w, seed=5)
    random_spread = [len({i % w for i in plain.next_batch()}) for _ in range(n // w)]
    assert np.mean(spread) > np.mean(random_spread) and spread[0] == w
    again = CameraSampler(n, w, seed=5)
    again.set_affinity(affinity)
    assert [again.next_batch() for _ in range(n // w)] == batches
    with pytest.raises(ValueError, match="affinity"):
        sampler.set_affinity(np.ones((n + 1, w)))


@pytest.mark.parametrize("owner_aware", [False, True])
def test_peek_shows_the_next_batch_without_drawing_it(owner_aware: bool) -> None:
    """The image prefetcher peeks at the next batch; peeking changes nothing, also across epoch boundaries."""
    import numpy as np

    sampler = CameraSampler(9, 4, seed=2)
    if owner_aware:
        sampler.set_affinity(np.eye(3)[np.arange(9) % 3])
    for _ in range(10):
        state = sampler.state_dict()
        peeked = sampler.peek_batch()
        assert sampler.state_dict() == state
        assert sampler.next_batch() == peeked
