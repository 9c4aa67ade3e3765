"""Each trial of a search is one DP-SGD training run; only the best stays.

:class:`TrialTuner` is a keras-tuner ``Tuner`` whose ``run_trial`` trains
with :func:`~keras_tempered_dp.training.train` (Poisson-sampled batches,
the clipping engine, the ledger), checks from the trained model's ledger
that the trial took exactly the steps the accounting assumed, scores the
model on the validation set and keeps the model only while it is the best
so far. The score is either

- private: ``(c + Z) / n_val`` with ``c`` the number of correctly
  classified examples of a validation split of the private data and
  ``Z ~ N(0, score_noise^2)`` from OS entropy (``c`` has sensitivity 1, so
  the release is the Gaussian mechanism, composed into the trial's RDP); or
- exact: ``c / n_val``, free only when the validation set is public (or
  in the plain search, which says that its ranking used unprotected data).

A trial whose training diverged (a non-finite loss) outputs no model and
the score ``-inf``: it is never the best, and the search goes on, so the
failure is part of that trial's output rather than a visible stop. Any
other error stops the search and releases nothing but itself.
"""

import dataclasses
import os
import secrets
import shutil

import keras_tuner

from keras_tempered_dp.privacy.accounting import Segment
from keras_tempered_dp.privacy.ledger import Ledger
from keras_tempered_dp.privacy.selection import secret_generator
from keras_tempered_dp.training.guards import NonFiniteError
from keras_tempered_dp.tuning.oracle import OBJECTIVE

FAILED = float("-inf")

# The search's flags that are not a trial's training settings.
TRIAL_VALUES = ("s", "T", "o", "learning_rate", "l2_norm_clip")


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """What every trial runs and what the accounting assumed of it.

    Args:
        train_data: ``(x, y)`` the trials train on (N examples).
        validation: ``(x, y)`` the trials are scored on.
        settings: :func:`train` settings shared by all trials (dataset,
            model, epochs, batch_size, noise_multiplier, delta, ...).
        segment: the accounted steps of one trial.
        score_noise: std of the Gaussian on the count of correct validation
            predictions; None scores exactly.
        private: True keeps no record of the trials but the best.
    """

    train_data: tuple
    validation: tuple
    settings: dict
    segment: Segment
    score_noise: float | None
    private: bool


@dataclasses.dataclass
class Best:
    """The best trial so far: its values, score and results."""

    values: dict
    score: float
    results: dict


class TrialTuner(keras_tuner.Tuner):
    """Runs each trial as a DP training run (module docstring).

    ``best`` holds the best trial, its model in ``best_dir``/model.keras;
    ``records`` every trial's values and score (the plain search only).
    """

    def __init__(self, oracle, hypermodel, plan, best_dir, **kwargs):
        super().__init__(oracle, hypermodel, **kwargs)
        self.plan = plan
        self.best_dir = best_dir
        self.best = None
        self.records = []
        self._rng = secret_generator()

    def run_trial(self, trial, *args, **kwargs):
        try:
            return {OBJECTIVE: self._run(trial.hyperparameters.values)}
        except NonFiniteError as error:
            self._record(trial.hyperparameters.values, FAILED, None,
                         failed=str(error))
            return {OBJECTIVE: FAILED}
        except Exception as error:
            # Never a retry nor a next trial after a failure: a rerun would
            # train on the data again, uncounted.
            raise keras_tuner.errors.FatalError(
                f"a trial failed, so the search stopped ({error!r}); "
                "nothing was released.") from error

    def _run(self, values):
        from keras_tempered_dp.training import train
        plan = self.plan
        folder = os.path.join(self.project_dir, "run")
        shutil.rmtree(folder, ignore_errors=True)
        trial_values = {k: v for k, v in values.items() if k in TRIAL_VALUES}
        results = train(
            data=(plan.train_data, plan.validation), output_dir=folder,
            verbose=0, seed=secrets.randbelow(2 ** 31), **plan.settings,
            **trial_values)
        self._check_steps(results)
        score = self._score(results["test_accuracy"])
        self._record(values, score, results["epsilon"])
        if self.best is None or score > self.best.score:
            os.makedirs(self.best_dir, exist_ok=True)
            shutil.move(os.path.join(folder, "model.keras"),
                        os.path.join(self.best_dir, "model.keras"))
            self.best = Best(dict(trial_values), score, results)
        shutil.rmtree(folder, ignore_errors=True)
        return score

    def _record(self, values, score, epsilon, failed=None):
        """The plain search keeps every trial's values and score; the
        private one none (only the best leaves)."""
        if self.plan.private:
            return
        record = {"hyperparameters": {k: v for k, v in values.items()
                                      if k in TRIAL_VALUES},
                  "validation_accuracy": None if failed else score,
                  "epsilon": epsilon}
        if failed:
            record["failed"] = failed
        self.records.append(record)

    def _check_steps(self, results):
        """The trial's ledger (the steps its model really took) must be
        exactly the accounted segment; more steps would spend more."""
        ledger = Ledger.from_dict(results["privacy_ledger"])
        if ledger.unattributed or ledger.segments != (self.plan.segment,):
            raise RuntimeError(
                f"the trial's ledger holds {ledger!r}, but the search "
                f"accounted {self.plan.segment!r}")

    def _score(self, accuracy):
        n_val = len(self.plan.validation[1])
        correct = round(float(accuracy) * n_val)
        if self.plan.score_noise is None:
            return correct / n_val
        return float(correct + self._rng.normal(0.0, self.plan.score_noise)
                     ) / n_val
