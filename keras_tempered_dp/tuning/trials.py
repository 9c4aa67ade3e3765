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

A trial whose training diverged outputs no model and the score ``-inf``:
it is never the best, and the search goes on, so the failure is part of
that trial's output rather than a visible stop. The private search judges
divergence by the trained weights (a post-processing of DP-SGD's noised
updates), never by the loss of a private batch: its trials train on after
a non-finite loss, and a model with a non-finite weight is not kept. The
plain search stops a trial at its first non-finite loss. Any other error
stops the search; a private search's error withholds its message (it may
describe private data).

Every trial starts from a cleared Keras session, so the released model's
layer names (Keras numbers them per session) are those of a first trial.
"""

import dataclasses
import os
import secrets
import shutil

import keras
import keras_tuner
import numpy as np

from keras_tempered_dp.privacy.accounting import Segment
from keras_tempered_dp.privacy.ledger import Ledger
from keras_tempered_dp.privacy.selection import secret_generator
from keras_tempered_dp.training.guards import TrainingDivergedError
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
        except TrainingDivergedError as error:  # the plain search only
            self._record(trial.hyperparameters.values, FAILED, None,
                         failed=str(error))
            return {OBJECTIVE: FAILED}
        except Exception as error:
            # Never a retry nor a next trial after a failure: a rerun would
            # train on the data again, uncounted.
            what = (f"{type(error).__name__}; its message is withheld, as "
                    "it may describe private data (--traceback shows it)"
                    if self.plan.private else repr(error))
            raise keras_tuner.errors.FatalError(
                f"a trial failed, so the search stopped ({what}); nothing "
                "was released.") from error

    def _run(self, values):
        from keras_tempered_dp.training import train
        plan = self.plan
        folder = os.path.join(self.project_dir, "run")
        shutil.rmtree(folder, ignore_errors=True)
        keras.backend.clear_session()  # layer names restart per trial
        trial_values = {k: v for k, v in values.items() if k in TRIAL_VALUES}
        results = train(
            data=(plan.train_data, plan.validation), output_dir=folder,
            verbose=0, seed=secrets.randbelow(2 ** 31),
            stop_on_non_finite_loss=not plan.private, **plan.settings,
            **trial_values)
        self._check_steps(results)
        score = self._score(results["test_accuracy"])
        if plan.private and not _finite_weights(folder):
            score = FAILED  # decided from the weights, a DP output
        self._record(values, score, results["epsilon"])
        if score > FAILED and (self.best is None or score > self.best.score):
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


def _finite_weights(folder):
    """Whether every weight of the model saved in ``folder`` is finite."""
    from keras_tempered_dp.privacy.saving import load_model
    model = load_model(os.path.join(folder, "model.keras"), compile=False)
    return all(np.all(np.isfinite(w)) for w in model.get_weights())
