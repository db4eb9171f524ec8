"""keras_serene.core: the plumbing every method shares.

- `layer_table`: what each layer class means to every consumer.
- `masking`: the PRUNED/FROZEN masks, the one mechanism that keeps entries
  from moving; `strip`: `strip_masks`.
- `optimizer_wrapper`: the `LossScaleOptimizer`-style wrapper base.
- `neurons`, `preactivations`: which weights belong to which neuron, and the
  probe that reads pre-activations.
- `distribute`, `data`, `checks`, `callback_config`: distribution helpers,
  batch iteration, argument validators, callback configs that hold data.
"""
