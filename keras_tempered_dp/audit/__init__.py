"""Privacy auditing: empirical lower bounds on epsilon from canary scores."""

from keras_tempered_dp.audit.bounds import (
    DEFAULT_GUESS_FRACTIONS,
    HeldOutThresholdAudit,
    OneRunAudit,
    clopper_pearson_lower,
    clopper_pearson_upper,
    default_guess_grid,
    held_out_threshold_audit,
    membership_inference_summary,
    one_run_audit,
    one_run_epsilon_lower_bound,
    one_run_p_value,
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
