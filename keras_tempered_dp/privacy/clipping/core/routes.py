"""Which units take the exact generic route, said once.

The generic route (:mod:`.norms.generic`) is exact for any layer but costs a
recomputation of the unit per example group: LSTMs, a layer called several
times (shared or tied weights), a layer whose class has no registered norm
function, or one with frozen weights whose function does not handle them.
Users who care about speed need to know which units those are, once, not at
every trace: the engine logs them through the ``keras_tempered_dp`` logger
at level INFO (``logging.basicConfig(level=logging.INFO)`` shows it).
"""

import logging
import weakref

_logger = logging.getLogger("keras_tempered_dp")
_announced = weakref.WeakSet()


def announce_generic(layer, calls, why=None):
    """Logs, the first time for ``layer``, that it takes the generic route
    and why (``calls``: how many times one forward pass calls it; ``why``:
    the reason, where a norm function sends the layer on)."""
    if layer in _announced:
        return
    _announced.add(layer)
    if why is None:
        why = (f"called {calls} times in one forward pass" if calls > 1
               else "no norm function registered for its class and weights")
    _logger.info(
        "DP engine: layer %r (%s) takes the exact generic route (%s): a "
        "per-example recomputation of the layer, slower than a norm "
        "function. docs/engine.md shows how to register one.",
        layer.name, type(layer).__name__, why)
