"""Privacy auditing: empirical lower bounds on epsilon from canary scores.

An audit inserts canaries, trains, scores each canary (higher score means
"more likely included") and turns the scores into a statistical test of the
claim "the training run is (epsilon, delta)-DP". Every epsilon the test
rejects at level ``1 - confidence`` is a lower bound on the true epsilon, with
probability at least ``confidence`` over the randomness of the audit. The
functions here are deliberately conservative: a bound that is too high claims
leakage that was not shown, and that is the one error an audit must not make.

The bounds, one module each:

- :mod:`.one_run_bound`: the one-run p-value and lower bound from guess
  counts (Steinke, Nasr & Jagielski 2023), a proof about the run audited;
- :mod:`.one_run`: the one-run audit from scores (guess grid, ranking);
- :mod:`.clopper_pearson`: one-sided Clopper-Pearson bounds on a proportion;
- :mod:`.threshold`: the fixed- and held-out-threshold bound (many-run;
  from one run a heuristic);
- :mod:`.membership`: membership-inference AUC and TPR at low FPR
  (descriptive);
- :mod:`.inputs`: the checks of scores, inclusion bits, delta and confidence.

The audit job (train with canaries, then all of the above): :mod:`.job`.
"""

from keras_tempered_dp.audit.clopper_pearson import (
    clopper_pearson_lower,
    clopper_pearson_upper,
)
from keras_tempered_dp.audit.membership import membership_inference_summary
from keras_tempered_dp.audit.one_run import (
    DEFAULT_GUESS_FRACTIONS,
    OneRunAudit,
    default_guess_grid,
    one_run_audit,
)
from keras_tempered_dp.audit.one_run_bound import (
    one_run_epsilon_lower_bound,
    one_run_p_value,
)
from keras_tempered_dp.audit.threshold import (
    HeldOutThresholdAudit,
    held_out_threshold_audit,
    threshold_epsilon_lower_bound,
)

__all__ = [
    "DEFAULT_GUESS_FRACTIONS",
    "HeldOutThresholdAudit",
    "OneRunAudit",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "default_guess_grid",
    "held_out_threshold_audit",
    "membership_inference_summary",
    "one_run_audit",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "threshold_epsilon_lower_bound",
]
