"""Norm functions both backends share, written in :mod:`..ops`.

Techniques: :mod:`.outer_products` (Dense, Conv2D from patches: ghost or
materialized norms, whichever is cheaper) and :mod:`.materialized` (small
per-example gradients formed outright). Layers: :mod:`.dense`,
:mod:`.einsum_dense` (both with LoRA, :mod:`.lora`), :mod:`.embedding`,
:mod:`.normalization` (LayerNormalization), :mod:`.position`
(AddPositionEmbedding). A function returns None where it does not apply
(a layer option it does not cover): the engine then takes its backend's
exact fallback (TensorFlow: recomputation per example; JAX: the replay).
"""
