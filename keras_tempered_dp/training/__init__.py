"""One DP training run, end to end: settings, data, noise plan, model, fit,
checkpoints and results.

:func:`train` is importable and is what ``keras-tempered-dp train`` runs.
It writes into ``output_dir``:

    results.json     settings, per-epoch loss / accuracy / epsilon, test
                     accuracy, wall time, the privacy statement, the ledger
                     of what each epoch spent (only for a finished run)
    log.csv          Keras CSVLogger (epsilon included)
    tensorboard/     TensorBoard logs (epoch_epsilon included)
    model.keras      the trained model (the averaged weights with
                     ``ema_decay``; a ScatterNet's front joined back to the
                     head trained on its precomputed features)
    checkpoint/      the last finished epoch, for ``resume=True``

Modules: :mod:`.config` (the settings tree), :mod:`.plan` (delta, steps,
noise), :mod:`.checkpoint` (epoch checkpoints, the privacy ledger, resume
checks), :mod:`.guards` (non-finite data and losses), :mod:`.results`
(results.json and the privacy statement), :mod:`.features` (a ScatterNet's
fixed features, computed once), :mod:`.run` (the steps).
"""

from keras_tempered_dp.training.config import RunConfig
from keras_tempered_dp.training.features import clear_feature_cache
from keras_tempered_dp.training.run import resumed_seed, train

__all__ = ["RunConfig", "clear_feature_cache", "resumed_seed", "train"]
