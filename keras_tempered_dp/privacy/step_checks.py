"""Checks that what ran is what the accountant is told: pure functions.

Each takes numbers (steps ``fit`` ran, the engine's counters, what the
step recorded, the data ``fit`` was given) and raises an error that names
both sides when they disagree; none has a Keras hook in it. The epsilon
callback calls them (:mod:`keras_tempered_dp.callbacks`).

Under Poisson sampling with rate q, the examples seen in ``s`` steps are a
sum of ``s * N`` Bernoulli(q) draws: mean ``s * N * q = s * B``, standard
deviation ``sqrt(s * N * q * (1 - q))``. An honest run stays within
:data:`POISSON_TOLERANCE_SDS` of them (a false alarm has probability below
1e-14); a batch size or N off by a factor lands far outside.
"""

import math

POISSON_TOLERANCE_SDS = 8


def check_fit_steps(fit_steps, steps_per_epoch, num_examples, batch_size):
    """Before training: ``fit`` runs the steps per epoch accounted."""
    if fit_steps is not None and fit_steps != steps_per_epoch:
        raise ValueError(
            f"fit runs {fit_steps} steps per epoch but EpsilonCallback "
            f"accounts steps_per_epoch={steps_per_epoch} (num_examples="
            f"{num_examples}, batch_size={batch_size}); give the callback "
            "the num_examples, batch_size and steps_per_epoch that fit uses.")


def check_epoch_steps(epoch, ran, steps_per_epoch):
    if ran > steps_per_epoch:
        raise RuntimeError(
            f"fit ran {ran} steps in epoch {epoch} but EpsilonCallback "
            f"accounts steps_per_epoch={steps_per_epoch}; epsilon for this "
            "epoch is not reported.")


def check_recorded_steps(epoch, ran, recorded, what="The clipping engine"):
    """The steps the model's step counted (or recorded) equal fit's."""
    if recorded != ran:
        raise RuntimeError(
            f"{what} counted {recorded} DP-SGD steps in epoch {epoch} but "
            f"fit ran {ran}; epsilon for this epoch is not reported.")


def check_examples(epoch, *, steps, examples, max_examples, batch_size,
                   num_examples, poisson):
    """The examples the engine saw fit the sampling accounted.

    Fixed-size batches: no step saw more than ``batch_size`` examples.
    Poisson: the mean per step is within the tolerance of ``batch_size``.
    """
    told = steps * batch_size
    if not poisson:
        if max_examples > batch_size or examples > told:
            raise RuntimeError(
                f"The clipping engine saw {examples} examples in {steps} "
                f"steps of epoch {epoch}, up to {max_examples} in one step, "
                f"more than batch_size={batch_size} per step: fit's batches "
                "are larger than the callback was told, which would "
                "understate epsilon. Give EpsilonCallback the batch_size "
                "fit uses.")
        return
    q = batch_size / num_examples
    tolerance = POISSON_TOLERANCE_SDS * math.sqrt(
        steps * num_examples * q * (1 - q)) + 1
    if abs(examples - told) > tolerance:
        raise RuntimeError(
            f"The clipping engine saw {examples} examples in {steps} "
            f"Poisson-sampled steps of epoch {epoch}, a mean of "
            f"{examples / max(steps, 1):.1f} per step, but the callback was "
            f"told batch_size={batch_size} of num_examples={num_examples} "
            f"(expected {told} +- {tolerance:.0f}). Give EpsilonCallback "
            "the num_examples and batch_size the sampler uses.")


def check_fit_data(data, *, num_examples, batch_size, sampling,
                   expected_batch_size, divides_by_drawn_size):
    """Before training: the data ``fit`` was given is the data accounted.

    Args:
        data: a :class:`~keras_tempered_dp.privacy.fit_data.FitData`.
        num_examples, batch_size, sampling: what the callback accounts.
        expected_batch_size: the engine's Poisson denominator, or None.
        divides_by_drawn_size: True when the step divides by the batch it
            drew (TF Privacy's optimizers; the engine without
            ``expected_batch_size``).

    Raises:
        ValueError: naming the argument to change.
    """
    poisson_data = data.mark is not None and data.mark.sampling == "poisson"
    if poisson_data:
        _check_poisson_step(data.mark, expected_batch_size,
                            divides_by_drawn_size)
    elif expected_batch_size is not None:
        _check_poisson_claim(data, expected_batch_size)
    _check_accounted_sampling(data, num_examples=num_examples,
                              batch_size=batch_size, sampling=sampling)


def _check_poisson_step(mark, expected_batch_size, divides_by_drawn_size):
    """Poisson-sampled data: the step divides by the expected batch size
    the sampler draws, never by the size it drew."""
    if divides_by_drawn_size:
        raise ValueError(
            "fit's data is Poisson-sampled (batches of random size, "
            f"expected {mark.batch_size}), but this model's step divides "
            "the noised sum by the size of the batch it drew: that size "
            "depends on which examples were drawn, so the update is no "
            "longer the Gaussian mechanism the accountant analyses. "
            "Compile with the package's engine and expected_batch_size="
            f"{mark.batch_size} (compile_dp(..., expected_batch_size="
            f"{mark.batch_size})); TF Privacy's optimizers cannot do "
            "this, so on the legacy stack use optimizer='fast'.")
    if expected_batch_size != mark.batch_size:
        raise ValueError(
            f"The engine divides by expected_batch_size="
            f"{expected_batch_size} but fit's Poisson batches expect "
            f"{mark.batch_size}; compile with expected_batch_size="
            f"{mark.batch_size}.")


def _check_poisson_claim(data, expected_batch_size):
    """An engine set for Poisson batches, given data not marked Poisson:
    nothing backs the accounting's Poisson claim."""
    if data.kind in ("arrays", "marked"):
        raise ValueError(
            f"The engine is set for Poisson batches (expected_batch_size"
            f"={expected_batch_size}) but fit's data is "
            f"{'arrays' if data.kind == 'arrays' else 'shuffled batches'}"
            ", cut into fixed-size batches: the accounting's Poisson "
            "claim would be false. Pass poisson_batches(x, y, "
            f"{expected_batch_size}) to fit, mark your own Poisson "
            "sampler with mark_sampling(dataset, 'poisson', N, B), or "
            "compile without expected_batch_size.")
    if data.kind == "dataset":
        raise ValueError(
            f"The engine is set for Poisson batches (expected_batch_size"
            f"={expected_batch_size}) but fit's dataset is not marked "
            "as Poisson-sampled, so nothing vouches for the claim. Use "
            "poisson_batches(...), or mark your own sampler with "
            "keras_tempered_dp.privacy.sampling.mark_sampling(dataset, "
            "'poisson', N, B).")


def _check_accounted_sampling(data, *, num_examples, batch_size, sampling):
    """The callback's N, B and sampling are those of fit's data: a larger
    N or a smaller B than fit's understates epsilon."""
    mark = data.mark
    if mark is not None:
        if mark.num_examples != num_examples or \
                mark.batch_size != batch_size:
            raise ValueError(
                f"EpsilonCallback(num_examples={num_examples}, batch_size="
                f"{batch_size}) but fit's dataset samples batches of "
                f"{mark.batch_size} from {mark.num_examples} examples; give "
                "the callback the dataset's numbers.")
        if mark.sampling == "poisson" and sampling != "poisson":
            raise ValueError(
                f"sampling={sampling!r} but fit's batches are Poisson-"
                "sampled: account them with sampling='poisson'.")
    elif data.kind == "arrays" and data.num_examples is not None \
            and num_examples > data.num_examples:
        raise ValueError(
            f"EpsilonCallback(num_examples={num_examples}) but fit trains on "
            f"{data.num_examples} examples: a larger N understates the "
            f"sampling rate and epsilon. Give num_examples="
            f"{data.num_examples}.")
    if data.batch_size is not None and data.mark is None \
            and data.batch_size > batch_size:
        raise ValueError(
            f"fit(batch_size={data.batch_size}) but EpsilonCallback("
            f"batch_size={batch_size}): a smaller batch size understates "
            "epsilon. Give the callback fit's batch_size.")
