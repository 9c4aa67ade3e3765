import keras
import numpy as np
import pytest

from keras_tempered_dp.privacy.sampling import (
    poisson_batches,
    shuffled_batches,
    steps_per_epoch,
)


def _take(dataset, steps):
    return [tuple(np.asarray(t) for t in batch)
            for batch in dataset.take(steps)]


def test_poisson_inclusion_is_independent_with_probability_q():
    n, batch, steps = 500, 50, 400
    x = np.arange(n).reshape(n, 1)
    batches = _take(poisson_batches(x, np.zeros(n), batch, seed=3), steps)
    counts = np.zeros(n)
    sizes = []
    for xb, _, wb in batches:
        assert np.all(wb == 1)
        assert len(np.unique(xb)) == len(xb)  # no repeats within a step
        counts[xb[:, 0]] += 1
        sizes.append(len(xb))
    q = batch / n
    # Independent reference: Binomial(steps, q) per example and
    # Binomial(n, q) per batch size.
    assert counts.mean() == pytest.approx(steps * q, rel=0.02)
    assert counts.var() == pytest.approx(steps * q * (1 - q), rel=0.15)
    assert np.mean(sizes) == pytest.approx(batch, rel=0.02)
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.2)


def test_empty_draw_is_a_zero_weight_step():
    x = np.arange(1000).reshape(1000, 1)
    batches = _take(poisson_batches(x, np.zeros(1000), 1, seed=0), 50)
    empty = [b for b in batches if b[2].sum() == 0]
    # P(empty) = (1 - 1/1000)^1000 ~ 0.37
    assert 5 < len(empty) < 35
    assert all(len(b[0]) == 1 for b in empty)


def test_unseeded_draws_differ():
    x = np.arange(100).reshape(100, 1)
    a = _take(poisson_batches(x, np.zeros(100), 30), 1)[0][0]
    b = _take(poisson_batches(x, np.zeros(100), 30), 1)[0][0]
    assert not np.array_equal(a, b)


def test_shuffled_batches_fixed_size_each_example_once_per_epoch():
    x = np.arange(103).reshape(103, 1)
    batches = _take(shuffled_batches(x, np.zeros(103), 10, seed=1), 10)
    seen = np.concatenate([b[0][:, 0] for b in batches])
    assert all(len(b[0]) == 10 for b in batches)
    assert len(np.unique(seen)) == 100


def test_steps_and_errors():
    assert steps_per_epoch(60000, 256) == 235  # what fit runs on arrays
    assert steps_per_epoch(60000, 256, "poisson") == 234
    assert steps_per_epoch(60000, 256, "shuffle") == 234
    assert steps_per_epoch(60000, 2048, "poisson") == 29
    with pytest.raises(ValueError, match="batch_size=0"):
        poisson_batches(np.zeros((5, 1)), np.zeros(5), 0)
    with pytest.raises(ValueError, match="y has 4"):
        poisson_batches(np.zeros((5, 1)), np.zeros(4), 2)


def test_shuffled_order_is_secret_without_a_seed():
    """Under a public global seed, tf.data's own seed=None would repeat the
    order; the sampler draws its seed from the operating system."""
    import numpy as np

    from keras_tempered_dp.privacy.sampling import shuffled_batches
    orders = []
    for _ in range(2):
        keras.utils.set_random_seed(0)
        data = shuffled_batches(np.arange(200), np.arange(200), 50)
        orders.append(np.asarray(next(iter(data))[0]))
    assert not np.array_equal(orders[0], orders[1])


def test_a_new_iterator_never_replays_a_seeded_draw():
    """A second fit on the same seeded dataset must not train the first
    fit's batches again (two releases on one subsample cost more than two
    accounted steps). The first iterator keeps the seed's draws."""
    x = np.arange(200.0)[:, None]
    data = poisson_batches(x, np.zeros(200), 50, seed=4)
    first, second = _take(data, 3), _take(data, 3)
    for a, b in zip(first, second):
        assert a[0].shape != b[0].shape or not np.array_equal(a[0], b[0])
    rng = np.random.default_rng(4)
    expected = np.flatnonzero(rng.random(200) < 0.25)
    np.testing.assert_array_equal(first[0][0][:, 0], expected)
    assert _take(poisson_batches(x, np.zeros(200), 50, seed=4), 1)[0][0] \
        .tolist() == first[0][0].tolist()  # a new dataset: the same draws


def test_whole_dataset_draws_are_marked():
    from keras_tempered_dp.privacy.sampling import GLOBAL_DRAW
    x, y = np.zeros((20, 2)), np.zeros(20)
    assert getattr(poisson_batches(x, y, 5), GLOBAL_DRAW)
    assert getattr(shuffled_batches(x, y, 5), GLOBAL_DRAW)
