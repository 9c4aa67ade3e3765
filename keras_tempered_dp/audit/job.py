"""The audit job: train once with canaries, score them, bound epsilon below.

One call of :func:`audit` is one training run of
:func:`~keras_tempered_dp.training.train` with ``num_canaries`` canaries,
each included with a secret fair coin, followed by

1. the canaries' scores (gradient canaries: the white-box statistic of
   :mod:`.gradient_canaries`; input canaries: minus their loss);
2. the one-run lower bound of Steinke, Nasr and Jagielski (2023): the proof
   from this single run that the training is *not* (eps, delta)-DP for any
   eps below it, with the stated confidence;
3. the Clopper-Pearson bound with a held-out threshold (the many-run
   statistic; from one run it is the usual heuristic, see
   :mod:`.threshold`);
4. loss-threshold membership inference (AUC, TPR at 1% and 0.1% FPR) on
   the canaries and on real training examples against test examples.

The accounted epsilon is an upper bound, the audit's a lower bound; a lower
bound above the accounted epsilon means a privacy bug (or the 1 - confidence
chance), and the statement says so. ``audit.json`` and ``canaries.npz``
(scores and the then no longer secret draws) are written only when the run
finished, beside the training run's own outputs.
"""

import dataclasses
import os

import keras
import numpy as np

from keras_tempered_dp.audit.canaries import (
    GradientCanaryCallback,
    draw_inclusion,
    loss_scores,
    mislabelled_canaries,
)
from keras_tempered_dp.audit.gradient_canaries import GradientCanaries
from keras_tempered_dp.audit.inputs import check_confidence
from keras_tempered_dp.audit.membership import membership_inference_summary
from keras_tempered_dp.audit.one_run import one_run_audit
from keras_tempered_dp.audit.threshold import held_out_threshold_audit
from keras_tempered_dp.data import load_dataset
from keras_tempered_dp.training import train
from keras_tempered_dp.training.config import RunConfig
from keras_tempered_dp.training.results import write_json
from keras_tempered_dp.validation import check_choice, check_number

CANARIES = ("gradient", "input")


@dataclasses.dataclass(frozen=True)
class AuditConfig:
    """What the audit adds to a training run.

    Args:
        canaries: "gradient" (white-box: injected by the clipping engine,
            the strongest test of clipping and noise) or "input" (black-box:
            mislabelled training examples scored by their loss; any model).
        num_canaries: m, at least 50; the one-run bound cannot exceed a
            cap that grows like ``log(m)``, however leaky the training
            (m = 1000: 5.3 if every guess is right, about 4.6 for perfect
            scores; docs/audit.md).
        confidence: of every bound, in (0, 1).
        canary_seed: None (default): the inclusion draws come from the
            operating system, secret from the training; a seed only for
            tests and reruns.
        mia_examples: real training and test examples each for the
            membership-inference summary (at most the test set's size).
    """

    canaries: str = "gradient"
    num_canaries: int = 1000
    confidence: float = 0.95
    canary_seed: int | None = None
    mia_examples: int = 5000

    def __post_init__(self):
        check_choice("canaries", self.canaries, CANARIES)
        # 50: each random half of the held-out bound then holds included
        # and excluded canaries but with probability about 2^-24.
        check_number("num_canaries", self.num_canaries, low=50, integer=True,
                     hint="The canaries m; hundreds or more give useful "
                     "bounds.")
        check_number("mia_examples", self.mia_examples, low=10,
                     integer=True, hint="Real training and test examples "
                     "each for the membership-inference summary.")
        check_confidence(self.confidence)
        check_number("canary_seed", self.canary_seed, low=0, integer=True,
                     allow_none=True,
                     hint="None (the default) draws the coins from the "
                     "OS's entropy.")


def audit(config=None, *, audit_config=None, data=None, **settings):
    """Trains with canaries and bounds the run's epsilon from below.

    Args:
        config: the training run's
            :class:`~keras_tempered_dp.training.RunConfig`; None builds it
            from ``settings``.
        audit_config: an :class:`AuditConfig`; None builds it from the
            ``settings`` named like its fields.
        data: ``((x, y), (x_test, y_test))`` instead of loading the dataset.
        **settings: flat fields of RunConfig and AuditConfig.

    Returns:
        The dictionary written to ``output_dir/audit.json``.

    Example (a run without noise; its canaries are found, up to what 200
    canaries can show):

    >>> report = audit(dataset="digits", epochs=10, noise_multiplier=0,
    ...                num_canaries=200, canary_seed=0, verbose=0,
    ...                output_dir=str(getfixture("tmp_path")))
    >>> report["one_run"]["epsilon"] > 2.5, report["accounted_epsilon"]
    (True, inf)
    """
    config, audit_config = _configs(config, audit_config, settings)
    rng = np.random.default_rng(audit_config.canary_seed)
    included = draw_inclusion(audit_config.num_canaries, seed=rng)
    (x, y), (x_test, y_test) = data or load_dataset(
        config.data.dataset, data_dir=config.data.data_dir,
        manual_dir=config.data.manual_dir, download=config.data.download)
    train_with_canaries = (_train_with_input_canaries
                           if audit_config.canaries == "input"
                           else _train_with_gradient_canaries)
    (x, y), results, model, scores, sampled = train_with_canaries(
        config, (x, y), (x_test, y_test), included, rng)
    folder = config.output.output_dir
    # The scores first: whatever happens next, the run's result is kept.
    np.savez(os.path.join(folder, "canaries.npz"), scores=scores,
             included=included,
             **({} if sampled is None else {"times_sampled": sampled}))
    report = _report(audit_config, results, scores, included, rng,
                     _real_data_mia(model, x, y, x_test, y_test,
                                    audit_config.mia_examples, rng))
    write_json(os.path.join(folder, "audit.json"), report)
    return report


def _configs(config, audit_config, settings):
    """The run's RunConfig and AuditConfig, from ``settings`` where not
    given, each refused before anything runs."""
    names = {f.name for f in dataclasses.fields(AuditConfig)}
    if audit_config is None:
        audit_config = AuditConfig(**{k: settings.pop(k) for k in names
                                      if k in settings})
    settings = dict(settings)
    settings.setdefault("output_dir", "runs/audit")
    config = (RunConfig.from_flat(**settings) if config is None
              else config.replace(**settings))
    _refuse(config)
    return config, audit_config


def _train_with_input_canaries(config, data, test, included, rng):
    """Trains on ``data`` with the included mislabelled canaries; returns
    the real training examples, the results, the model, the canaries'
    scores (minus their loss) and None (no sampling counts)."""
    num_canaries = included.size
    (x, y), (x_canary, y_canary) = mislabelled_canaries(*data, num_canaries,
                                                        rng)
    # An excluded canary's place goes to a held-back real example, so
    # N (hence q and the steps) does not depend on the secret coins.
    (x, y), (x_filler, y_filler) = _held_back(x, y, num_canaries, rng)
    train_x = np.concatenate([x, x_canary[included], x_filler[~included]])
    train_y = np.concatenate([y, y_canary[included], y_filler[~included]])
    results = train(config, data=((train_x, train_y), test))
    model = _load(config)
    scores = loss_scores(model, x_canary, y_canary)
    return (x, y), results, model, scores, None


def _train_with_gradient_canaries(config, data, test, included, rng):
    """Trains on ``data`` with the engine injecting the gradient canaries;
    returns ``data``, the results, the model, the canaries' scores and how
    often each was sampled."""
    rate = config.optimizer.batch_size / len(data[0])
    canaries = GradientCanaries(included, sampling_rate=min(1.0, rate),
                                seed=int(rng.integers(2**62)))
    results = train(config, data=(data, test),
                    callbacks=[GradientCanaryCallback(canaries)])
    return (data, results, _load(config), canaries.scores(),
            canaries.times_sampled())


def _refuse(config):
    if config.distribute.strategy != "none":
        raise ValueError(
            f"strategy={config.distribute.strategy!r}: an audit trains on "
            "one device (gradient canaries are injected once per step); "
            "leave --strategy out.")
    if config.output.resume:
        raise ValueError("resume=True: an audit is one fresh run (its "
                         "canaries are drawn when it starts); leave "
                         "--resume out.")


def _held_back(x, y, count, rng):
    """``count`` random examples of ``(x, y)`` set apart from the rest."""
    if count > len(x) // 2:
        raise ValueError(
            f"num_canaries={count}: input canaries need twice as many "
            f"training examples (the canaries and as many held back); "
            f"there are {len(x) + count}. Use fewer canaries.")
    order = rng.permutation(len(x))
    kept, held = np.sort(order[count:]), order[:count]
    return (x[kept], y[kept]), (x[held], y[held])


def _load(config):
    return keras.models.load_model(
        os.path.join(config.output.output_dir, "model.keras"))


def _real_data_mia(model, x, y, x_test, y_test, count, rng):
    """Loss-threshold membership inference: training examples (members)
    against test examples (non-members), as many of each."""
    count = min(count, len(x), len(x_test))
    members = rng.choice(len(x), count, replace=False)
    others = rng.choice(len(x_test), count, replace=False)
    scores = np.concatenate([loss_scores(model, x[members], y[members]),
                             loss_scores(model, x_test[others],
                                         y_test[others])])
    truth = np.concatenate([np.ones(count, bool), np.zeros(count, bool)])
    return dict(membership_inference_summary(scores, truth),
                examples=int(count))


def _report(audit_config, results, scores, included, rng, real_mia):
    delta = results["config"]["delta"]
    confidence = audit_config.confidence
    one_run = one_run_audit(scores, included, delta=delta,
                            confidence=confidence)
    held_out = held_out_threshold_audit(
        scores, included, delta=delta, confidence=confidence,
        seed=int(rng.integers(2**62)))
    accounted = results["epsilon"]
    report = {
        "canaries": audit_config.canaries,
        "num_canaries": int(included.size),
        "included": int(included.sum()),
        "confidence": confidence,
        "delta": delta,
        "accounted_epsilon": accounted,
        "accountant": results["accountant"],
        "one_run": dataclasses.asdict(one_run),
        "held_out_threshold": dataclasses.asdict(held_out),
        "canary_mia": membership_inference_summary(scores, included),
        "training_data_mia": real_mia,
        "test_accuracy": results["test_accuracy"],
        "training": results["config"],
    }
    report["statement"] = statement(report)
    return report


def statement(report):
    """What the audit showed, in one paragraph."""
    lower, upper = report["one_run"]["epsilon"], report["accounted_epsilon"]
    text = (
        f"Audit with {report['num_canaries']} {report['canaries']} canaries "
        f"({report['included']} included by secret fair coins): with "
        f"confidence {report['confidence']:g} the training is not "
        f"(eps, {report['delta']:g})-DP for any eps below {lower:.3f} "
        "(one-run bound, Steinke et al. 2023); the accountant's upper bound "
        f"is {upper:.3f} ({report['accountant']}). Held-out-threshold "
        f"Clopper-Pearson bound (many-run statistic): "
        f"{report['held_out_threshold']['epsilon']:.3f}.")
    if lower > upper:
        text += (" THE AUDIT CONTRADICTS THE ACCOUNTANT: the training leaks "
                 "more than its epsilon says. This is a privacy bug unless "
                 f"it is the {1 - report['confidence']:g} chance of a false "
                 "alarm; rerun with fresh canaries and report it.")
    else:
        text += (" Consistent: a lower bound below the accounted epsilon "
                 "does not prove the guarantee; it is what an audit that "
                 "found no bug looks like.")
    return text
