"""Skipping fully frozen layers: no weight gradients, and no retrace per epoch.

Zeroing a frozen neuron's update (the masks) keeps it still but saves no
time: the backward pass still computes its gradient. NEq's point is to save
that work (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022, arXiv
2207.09455, Sec. 4: backprop FLOPs saved). When every neuron of a Dense/Conv
layer is frozen, `LayerSkip` makes the layer non-trainable for the epoch, so
the traced train step takes no gradient for its variables (and, for a
frozen first layer, none for its input either); the optimizer step skips
them too, so their optimizer state does not move.

Keras traces a train function for the variables trainable when it first
runs; a new trainable set needs a new trace (and an XLA compile). `LayerSkip`
keeps one compiled train function per set of skipped layers and swaps
`model.train_function` between them, so each set is traced once per fit,
not once per epoch. Trainability is changed only *during* an epoch: it is
set in `on_epoch_begin` and put back first thing in `on_epoch_end`, so a
`ModelCheckpoint` or `model.save` between epochs sees the model as the user
built it. BatchNormalization is never skipped: a non-trainable Keras BN runs
in inference mode, which would change the forward pass.
"""


class LayerSkip:
    """Keeps one train function per set of skipped layers of `model`."""

    def __init__(self, model):
        self.model = model
        self.functions = {}  # frozenset of layer ids -> train function
        self.base = None  # the train function `fit` made (all trainable)
        self.current = frozenset()
        self.skipped = []
        #: Train functions made (each is traced once, on its first call).
        self.made = 0

    def start(self):
        """At `on_train_begin`: forget functions of an earlier compile."""
        self.restore()
        function = self.model.train_function
        if function is not self.base:
            self.functions = {}
            self.base = function
        self.functions[frozenset()] = self.base

    def skip(self, layers):
        """Makes `layers` (and only them) non-trainable, with their function."""
        key = frozenset(id(layer) for layer in layers)
        if key == self.current:
            return
        self.restore()
        if not key:
            return
        for layer in layers:
            layer.trainable = False
        self.skipped = list(layers)
        self.current = key
        function = self.functions.get(key)
        if function is None:
            self.model.make_train_function(force=True)
            function = self.functions[key] = self.model.train_function
            self.made += 1
        self.model.train_function = function

    def restore(self):
        """Makes the skipped layers trainable again, with the base function."""
        if not self.skipped:
            return
        for layer in self.skipped:
            layer.trainable = True
        self.skipped = []
        self.current = frozenset()
        if self.base is not None:
            self.model.train_function = self.base
