"""Per-example squared-norm functions, one module per layer family.

Techniques shared by the families: :mod:`.outer_products` (Dense, Conv2D:
materialized or ghost norms, whichever is cheaper), :mod:`.materialized`
(small per-example gradients) and :mod:`.generic` (exact recomputation, for
every layer without a function of its own). They are registered in
``keras_tempered_dp/privacy/clipping/__init__.py``.
"""
