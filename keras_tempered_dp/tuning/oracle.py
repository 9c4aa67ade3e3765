"""A keras-tuner oracle whose number of trials is random and secret.

Papernot & Steinke's bound on releasing the best of K trials
(:mod:`keras_tempered_dp.privacy.selection`) holds when K is drawn from its
law and never revealed, and when every trial is an independent run of the
same randomized procedure. So the oracle:

- draws K once, from OS entropy, when it is made, and keeps it in no
  attribute that keras-tuner saves, prints or returns; prints nothing
  (keras-tuner's progress lines number the trials), whatever ``verbose``
  is set to;
- draws every trial's hyperparameters independently from the space, from OS
  entropy too: with a seed, the released best trial's values would sit at a
  known position of the seeded sequence and show that K was at least that
  large. No duplicate check either: a redraw after a collision would make
  the trials depend on each other;
- never retries a trial: a retry would run on the data again, uncounted.

keras-tuner's own records of the trials (their ids count up, its state
lists them) do show K once trials have run: the private search runs the
oracle in a temporary folder, deletes it, and releases no id.

Example:

>>> import keras_tuner
>>> from keras_tempered_dp.privacy.selection import TrialCount
>>> hp = keras_tuner.HyperParameters()
>>> _ = hp.Float("T", 0.25, 8.0, sampling="log")
>>> # A truncated negative binomial K is at least 1 (a Poisson K can be 0).
>>> oracle = SecretTrialsOracle(TrialCount(mean=2.0), hyperparameters=hp)
>>> 0.25 <= oracle.populate_space("0")["values"]["T"] <= 8.0
True
"""

import keras_tuner

from keras_tempered_dp.privacy.selection import TrialCount, secret_generator

OBJECTIVE = "score"


class SecretTrialsOracle(keras_tuner.Oracle):
    """Random search over ``hyperparameters`` for a secret number of
    trials K ~ ``trial_count``; the objective ``"score"`` is maximized.

    Args:
        trial_count: a :class:`~keras_tempered_dp.privacy.selection.
            TrialCount`.
        hyperparameters: the space (or let the tuner's hypermodel fill it).
    """

    def __init__(self, trial_count, hyperparameters=None, **kwargs):
        if not isinstance(trial_count, TrialCount):
            raise ValueError(f"trial_count={trial_count!r}: must be a "
                             "TrialCount(distribution, mean, eta).")
        for name in ("max_trials", "seed", "max_retries_per_trial"):
            if name in kwargs:
                raise ValueError(
                    f"{name}={kwargs[name]!r}: the secret-trials oracle "
                    "sets it itself (K is secret and random, draws use OS "
                    "entropy, failed trials are never rerun).")
        super().__init__(
            objective=keras_tuner.Objective(OBJECTIVE, "max"),
            max_trials=None, hyperparameters=hyperparameters,
            max_retries_per_trial=0, max_consecutive_failed_trials=1,
            **kwargs)
        self.trial_count = trial_count
        self._display.verbose = 0
        self._rng = secret_generator()
        # Name-mangled, out of get_state(): nothing saves or shows K.
        self.__remaining = trial_count.sample(self._rng)

    @property
    def verbose(self):
        return 0

    @verbose.setter
    def verbose(self, value):
        """Progress lines would count the trials: always silent."""

    def populate_space(self, trial_id):
        if self.__remaining <= 0:
            return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED,
                    "values": None}
        self.__remaining -= 1
        return {"status": keras_tuner.engine.trial.TrialStatus.RUNNING,
                "values": self._draw()}

    def _draw(self):
        values = keras_tuner.HyperParameters()
        for hp in self.hyperparameters.space:
            values.merge([hp])
            if values.is_active(hp):
                seed = int(self._rng.integers(2 ** 62))
                values.values[hp.name] = hp.random_sample(seed)
        return values.values

    def get_state(self):
        state = super().get_state()
        state.pop("seed", None)
        state.pop("seed_state", None)
        return state
