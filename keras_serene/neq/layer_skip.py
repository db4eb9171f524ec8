"""Skipping fully frozen layers: no weight gradients, and no retrace per epoch.

Zeroing a frozen neuron's update (the masks) keeps it still but saves no
time: the backward pass still computes its gradient. NEq's point is to save
that work (Bragagnolo, Tartaglione, Grangetto, NeurIPS 2022, arXiv
2207.09455, Sec. 4: backprop FLOPs saved). When every neuron of a layer is
frozen, `LayerSkip` makes its variables non-trainable for the epoch, so the
traced train step takes no gradient for them; the optimizer step skips them
too, so their optimizer state does not move. When no layer before a skipped
one trains, the gradient stops there: no backward work at all for that
prefix of the network.

The variables are switched, not the layer (`variable.trainable`, not
`layer.trainable`): a Keras BatchNormalization made non-trainable runs in
inference mode, which would change the forward pass, while one whose gamma
and beta are non-trainable still normalizes with the batch statistics and
updates its moving ones. So BatchNormalization is skipped like Dense and
Conv, and a frozen Conv-BN prefix of a ResNet costs no backward pass.

Keras traces a train function for the variables trainable when it first
runs; a new trainable set needs a new trace (and an XLA compile). `LayerSkip`
keeps one compiled train function per set of skipped layers and swaps
`model.train_function` between them, so each set is traced once per fit,
not once per epoch. Trainability is changed only *during* an epoch: it is
set in `on_epoch_begin` and put back first thing in `on_epoch_end`, so a
`ModelCheckpoint` or `model.save` between epochs sees the model as the user
built it.
"""


class LayerSkip:
    """Keeps one train function per set of skipped layers of `model`."""

    def __init__(self, model):
        self.model = model
        self.functions = {}  # frozenset of layer ids -> train function
        self.base = None  # the train function `fit` made (all trainable)
        self.current = frozenset()
        self.skipped = []
        self._variables = []  # the variables made non-trainable
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
        """Makes the variables of `layers` (and only them) non-trainable,
        with the train function of that set."""
        key = frozenset(id(layer) for layer in layers)
        if key == self.current:
            return
        self.restore()
        if not key:
            return
        self._variables = [
            v for layer in layers for v in layer.trainable_variables
        ]
        for variable in self._variables:
            variable.trainable = False
        self.skipped = list(layers)
        self.current = key
        function = self.functions.get(key)
        if function is None:
            self.model.make_train_function(force=True)
            function = self.functions[key] = self.model.train_function
            self.made += 1
        self.model.train_function = function

    def restore(self):
        """Makes the skipped variables trainable again, with the base
        function."""
        if not self.skipped:
            return
        for variable in self._variables:
            variable.trainable = True
        self.skipped = []
        self._variables = []
        self.current = frozenset()
        if self.base is not None:
            self.model.train_function = self.base
