r"""Membership-inference summary statistics: descriptive, no confidence.

Higher score means predicted member. The ROC AUC is the Mann-Whitney
statistic with average ranks (ties count 1/2),

.. math::

    \mathrm{AUC} = \frac{R_{in} - n_{in} (n_{in} + 1) / 2}{n_{in} n_{out}},

with ``R_in`` the sum of the members' ranks; the TPR at a low FPR is the
largest empirical TPR of a rule "in if score >= t" whose empirical FPR is at
most that FPR. These are point estimates, not bounds: the bounds on epsilon
are :mod:`.one_run` and :mod:`.threshold`.
"""

import numpy as np
import scipy.stats

from keras_tempered_dp.audit.inputs import check_scores_and_included


def membership_inference_summary(scores, included):
    r"""ROC AUC and low-FPR true-positive rates of a membership attack.

    Higher score means predicted member. ``auc`` is the Mann-Whitney
    statistic ``(R_in - n_in (n_in + 1) / 2) / (n_in n_out)`` with average
    ranks, so ties count 1/2. ``tpr_at_1pct_fpr`` (and at 0.1%) is the
    largest empirical TPR over the rules "in if score >= t" whose empirical
    FPR is <= 1% (0.1%); the rule predicting nothing (TPR 0) always counts.
    These are point estimates, not bounds.

    Args:
        scores: 1-D array of finite scores.
        included: 1-D boolean array of inclusion bits, both classes present.

    Returns:
        A dict with keys ``"auc"``, ``"tpr_at_1pct_fpr"`` and
        ``"tpr_at_0.1pct_fpr"``.

    Raises:
        ValueError: On invalid inputs or if a class is missing.

    Example:
        >>> summary = membership_inference_summary(
        ...     [0.9, 0.8, 0.3, 0.1], [True, False, True, False])
        >>> summary["auc"]
        0.75
    """
    scores, included = check_scores_and_included(scores, included)
    n_in = int(included.sum())
    n_out = included.size - n_in
    if n_in == 0 or n_out == 0:
        raise ValueError(
            f"included: has {n_in} included and {n_out} excluded canaries; "
            "both classes are needed.")
    ranks = scipy.stats.rankdata(scores)  # average ranks for ties
    auc = (ranks[included].sum() - n_in * (n_in + 1) / 2.0) / (n_in * n_out)

    s_in, s_out = np.sort(scores[included]), np.sort(scores[~included])
    thresholds = np.unique(scores)
    tpr = (n_in - np.searchsorted(s_in, thresholds, side="left")) / n_in
    fpr = (n_out - np.searchsorted(s_out, thresholds, side="left")) / n_out

    def tpr_at(max_fpr):
        ok = fpr <= max_fpr
        return float(tpr[ok].max()) if ok.any() else 0.0

    return {"auc": float(auc), "tpr_at_1pct_fpr": tpr_at(0.01),
            "tpr_at_0.1pct_fpr": tpr_at(0.001)}
