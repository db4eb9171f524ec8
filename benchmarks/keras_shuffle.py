"""Does `model.fit(x, y)` reshuffle arrays every epoch under a global seed?

Keras 3 (TensorFlow backend, 3.15 with TF 2.21 here) draws each epoch's
order of array inputs with `tf.random.shuffle` inside a dataset it iterates
afresh each epoch; after `keras.utils.set_random_seed` that op restarts from
the same state every epoch, so every epoch replays the first one's order
(tf_keras reshuffles). This script shows it on 1,000 numbered samples: the
first two sample numbers of each epoch's first batch, for `fit(x, y)` and
for `datasets.fit_arrays` (a seeded `tf.data` shuffle with
`reshuffle_each_iteration=True`), each with and without the global seed.

    python benchmarks/keras_shuffle.py
"""

import subprocess
import sys

import keras
import numpy as np

from keras_serene.app import datasets


class FirstSamples(keras.Model):
    """Trains nothing: its train step returns the batch's first samples."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(1)

    def call(self, x):
        return self.dense(x)

    def train_step(self, data):
        x, _ = data
        return {"first": x[0, 0], "second": x[1, 0]}


def first_batches(how, seeded, epochs=4):
    if seeded:
        keras.utils.set_random_seed(0)
    model = FirstSamples()
    model.compile(optimizer="sgd", loss="mse")
    x = np.arange(1000, dtype="float32")[:, None]
    y = np.zeros((1000, 1), "float32")
    seen = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: (
            batch == 0
            and seen.append((int(logs["first"]), int(logs["second"])))
        )
    )
    data = (
        dict(x=x, y=y, batch_size=100, validation_split=0.1)
        if how == "fit(x, y)"
        else datasets.fit_arrays(x, y, 100, seed=0)
    )
    model.fit(**data, epochs=epochs, verbose=0, callbacks=[record])
    return seen


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv:  # one case, in its own process (a clean global seed)
        how, seeded = argv[0], argv[1] == "seeded"
        firsts = first_batches(how, seeded)
        seed = "set_random_seed(0)" if seeded else "no seed"
        verdict = "one order" if len(set(firsts)) == 1 else "reshuffled"
        print(f"{how:<12} {seed:<19} {firsts}  {verdict}")
        return 0
    print("first two samples of each epoch's first batch, epochs 1-4:")
    for how in ("fit(x, y)", "fit_arrays"):
        for seeded in ("seeded", "unseeded"):
            subprocess.run([sys.executable, __file__, how, seeded], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
