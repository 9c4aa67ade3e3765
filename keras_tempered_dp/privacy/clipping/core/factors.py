"""Clip factors: how much of each group's gradient enters the sum.

``c_m = C / max(||g_m||, C)`` ("clip", "quantile": exactly TF Privacy's
``clip_by_global_norm``, so ``||c_m g_m|| <= C``), or ``c_m = C / (||g_m||
+ gamma)`` ("normalize", Bu et al. 2022: every contribution has norm below
C). Both backends' steps use this one function.
"""

from . import ops


def clip_factors(norms, clip, clipping, gamma):
    """``[G]`` factors from ``[G]`` norms.

    >>> import numpy as np
    >>> [float(f) for f in clip_factors(np.array([0.5, 4.0], "float32"),
    ...                                 1.0, "clip", 0.01)]
    [1.0, 0.25]
    """
    if clipping == "normalize":
        return clip / (norms + gamma)
    return clip / ops.maximum(norms, clip)
