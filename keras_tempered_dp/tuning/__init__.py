"""Searches over the tempered sigmoid's (s, T, o), plain or private.

- :class:`TemperedSigmoidHyperModel`: the search space, for plain
  keras-tuner users.
- :func:`search`: every trial a DP-SGD training run; ``private=True`` makes
  the search and its released best model one ``(epsilon, delta)``-DP
  mechanism (Papernot & Steinke, ICLR 2022): a secret, random number of
  trials (:class:`SecretTrialsOracle`), noised scores, the best kept.
"""

from keras_tempered_dp.tuning.hypermodel import (
    TemperedSigmoidHyperModel,
    require_tensorboard,
)
from keras_tempered_dp.tuning.oracle import SecretTrialsOracle
from keras_tempered_dp.tuning.search import search
from keras_tempered_dp.tuning.settings import SearchSettings
from keras_tempered_dp.tuning.trials import TrialTuner

__all__ = [
    "SearchSettings",
    "SecretTrialsOracle",
    "TemperedSigmoidHyperModel",
    "TrialTuner",
    "require_tensorboard",
    "search",
]
