"""Collection rules for both test paths (tests/ and the package's doctests).

The engine's JAX backend (keras_tempered_dp/privacy/clipping/backend/jax/)
imports JAX, which the legacy stack does not install: its modules are not
collected for doctests there.
"""

import importlib.util

collect_ignore_glob = (
    [] if importlib.util.find_spec("jax") is not None
    else ["keras_tempered_dp/privacy/clipping/backend/jax/*"])
