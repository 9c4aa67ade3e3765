"""The engine on TensorFlow (Keras 3's TensorFlow backend and Keras 2).

TensorFlow's ``train_step`` is stateful: the step taps the clip units'
calls in one forward pass (:mod:`.tap`), differentiates to their outputs
under a GradientTape, computes norms and clipped sums (:mod:`.clipped_sum`,
:mod:`.norms`), accumulates physical chunks (:mod:`.accumulation`), draws
the noise from a ``tf.random.Generator`` (:mod:`.noise`) and assigns the
model's variables inside a ``tf.function`` (:mod:`.installation`), across
tf.distribute replicas where asked (:mod:`.replicas`,
:mod:`.strategies`).
"""
