"""Cross-replica plumbing for the optimizer wrapper (TensorFlow backend).

Under `tf.distribute` (MirroredStrategy, multi-worker), the train step runs in
a replica context: each replica holds a partial gradient (Keras scales the
loss by 1/replicas) and model variables are mirrored. LOBSTER's sensitivity
needs the full minibatch gradient, and the post-step decay and masks must
update every mirror identically. These two helpers do that through public
`tf.distribute` API, and are plain no-ops on one device or other backends.
"""

import keras


def _replica_context():
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if (
        not tf.distribute.has_strategy()
        or tf.distribute.in_cross_replica_context()
    ):
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def all_reduce_sum(tensors):
    """Sums a list of tensors over the replicas (identity on one device)."""
    context = _replica_context()
    if context is None or not tensors:
        return list(tensors)
    import tensorflow as tf

    return list(context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors)))


def assign_all(variables, values):
    """Assigns `values` to `variables` on every replica."""
    context = _replica_context()
    if context is None:
        for variable, value in zip(variables, values):
            variable.assign(value)
        return

    def merge_fn(strategy, variables, values):
        for variable, value in zip(variables, values):
            tf_variable = getattr(variable, "value", variable)
            strategy.extended.update(
                tf_variable, _assign, args=(value,), group=False
            )

    context.merge_call(merge_fn, args=(list(variables), list(values)))


def _assign(variable, value):
    return variable.assign(value)
