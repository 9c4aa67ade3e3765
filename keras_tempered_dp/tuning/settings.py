"""The settings of a search, validated once, before data or trials."""

import dataclasses

from keras_tempered_dp.models import MODELS
from keras_tempered_dp.privacy.accounting import ACCOUNTANTS
from keras_tempered_dp.privacy.selection import (
    DISTRIBUTIONS,
    SCORE_NOISE_HINT,
    TrialCount,
)
from keras_tempered_dp.validation import check_choice, check_number

# The plain search's number of trials when none is given.
DEFAULT_MAX_TRIALS = 10


@dataclasses.dataclass(frozen=True)
class SearchSettings:
    """The numbers of a :func:`~keras_tempered_dp.tuning.search`.

    :func:`search` makes one before it loads data or runs a trial, so a bad
    setting (``max_trials=0``, ``epochs=0``, ``delta=0``, ...) is refused
    at once, by name, instead of running a meaningless or endless search.
    ``delta`` and ``batch_size`` can only be checked against ``N`` once the
    data is loaded: :meth:`resolved_delta`, still before any trial.

    Plain search (``private=False``): ``max_trials`` trials (default
    :data:`DEFAULT_MAX_TRIALS`), each calibrated to ``target_epsilon``.
    Private search: ``target_epsilon`` covers the whole search; the number
    of trials is secret and random (``trials_distribution``,
    ``trials_mean``, ``trials_eta``: a
    :class:`~keras_tempered_dp.privacy.selection.TrialCount`), so
    ``max_trials`` is refused; ``score_noise`` noises each trial's private
    validation score (unused with a public validation set); ``accountant``
    must be "rdp" (the selection bound is Renyi DP).

    Example:

    >>> SearchSettings(max_trials=0)
    Traceback (most recent call last):
    ...
    ValueError: max_trials=0: must be >= 1.
    """

    target_epsilon: float = 3.0
    max_trials: int | None = None
    epochs: int = 5
    batch_size: int = 64
    delta: float | None = None
    validation_fraction: float = 0.1
    accountant: str = "rdp"
    model: str | None = None
    l2_norm_clip: float | None = None
    learning_rate_range: tuple | None = None
    private: bool = False
    trials_distribution: str = "truncated_negative_binomial"
    trials_mean: float = 5.0
    trials_eta: float = 0.0
    score_noise: float = 20.0

    def __post_init__(self):
        check_number("target_epsilon", self.target_epsilon, low=0,
                     low_open=True)
        for name in ("epochs", "batch_size"):
            check_number(name, getattr(self, name), low=1, integer=True)
        check_number("max_trials", self.max_trials, low=1, integer=True,
                     allow_none=True)
        # delta=0 is refused, not replaced by the default.
        check_number("delta", self.delta, low=0, low_open=True, high=1,
                     high_open=True, allow_none=True)
        check_number("validation_fraction", self.validation_fraction,
                     low=0, high=1, low_open=True, high_open=True,
                     hint="It is the share of the training set held out "
                          "to score trials.")
        check_choice("accountant", self.accountant, ACCOUNTANTS)
        if self.model is not None:
            check_choice("model", self.model, tuple(MODELS))
        check_number("l2_norm_clip", self.l2_norm_clip, low=0,
                     low_open=True, allow_none=True, hint=(
                         "None searches it; a number fixes it."))
        self._check_learning_rate_range()
        check_choice("private", self.private, (True, False))
        check_choice("trials_distribution", self.trials_distribution,
                     DISTRIBUTIONS)
        check_number("score_noise", self.score_noise, low=0, low_open=True,
                     hint=SCORE_NOISE_HINT)
        if self.private:
            self._check_private()
        self.trial_count()  # validates mean and eta

    def _check_learning_rate_range(self):
        value = self.learning_rate_range
        if value is None:
            return
        hint = ("Give (low, high), 0 < low < high, chosen without looking "
                "at the private data (a range picked from it is a release).")
        if (isinstance(value, (str, bytes)) or not hasattr(value, "__len__")
                or len(value) != 2):
            raise ValueError(f"learning_rate_range={value!r}: must be a "
                             f"pair. {hint}")
        low = check_number("learning_rate_range[0]", value[0], low=0,
                           low_open=True, hint=hint)
        high = check_number("learning_rate_range[1]", value[1], low=0,
                            low_open=True, hint=hint)
        if low >= high:
            raise ValueError(f"learning_rate_range={value!r}: low must be "
                             f"below high. {hint}")
        object.__setattr__(self, "learning_rate_range", (low, high))

    def _check_private(self):
        if self.max_trials is not None:
            raise ValueError(
                f"max_trials={self.max_trials!r} with private=True: the "
                "private search runs a random, secret number of trials "
                "(the bound holds only for that); set its expected number "
                "with trials_mean (--trials_mean) instead.")
        if self.accountant != "rdp":
            raise ValueError(
                f"accountant={self.accountant!r} with private=True: the "
                "bound on the best of K trials (Papernot & Steinke) is "
                "stated in Renyi DP; use accountant='rdp'.")

    @property
    def trials(self):
        """The plain search's number of trials."""
        return self.max_trials or DEFAULT_MAX_TRIALS

    def trial_count(self):
        """The law of the private search's number of trials."""
        try:
            return TrialCount(self.trials_distribution, self.trials_mean,
                              self.trials_eta)
        except ValueError as error:  # named as the search's settings
            message = str(error)
            for name in ("mean", "eta"):
                if message.startswith(f"{name}="):
                    message = f"trials_{message}"
            raise ValueError(message) from None

    def resolved_delta(self, n):
        """``delta``, or ``min(1e-5, 1/(10 n))`` when None, for ``n``
        training examples.

        Raises:
            ValueError: if ``n`` is below one batch, or ``delta >= 1/n``.
        """
        if n < self.batch_size:
            raise ValueError(
                f"batch_size={self.batch_size!r}: larger than the {n} "
                "training examples left after the validation split; use a "
                "smaller batch size.")
        if self.delta is None:
            return min(1e-5, 1 / (10 * n))
        if self.delta >= 1 / n:
            raise ValueError(
                f"delta={self.delta!r}: must be below 1/N = {1 / n:.3g} "
                f"(N = {n} training examples per trial); a delta that large "
                "allows releasing an example outright.")
        return self.delta
