"""The papers' reference networks, as plain Keras 3 models.

- LeNet-300-100 (LOBSTER Table 1, NeurIPS 2018 Sec. 4.1): 784-300-100-10
  fully connected, ReLU.
- LeNet-5, Caffe variant (LOBSTER Table 2): conv 20 5x5, max-pool, conv 50
  5x5, max-pool, fc 500, fc 10.
- A small MobileNet-like CNN and a small residual CNN, for the slimming and
  NEq benchmarks.

The models end with logits (no softmax), as the authors' code does; compile
them with `from_logits=True` losses.
"""

import keras
from keras import layers


def lenet300(input_shape=(28, 28, 1), num_classes=10, name="lenet300"):
    """LeNet-300-100: Flatten -> 300 -> 100 -> classes, ReLU, logits out."""
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(300, activation="relu", name="fc1")(x)
    x = layers.Dense(100, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, name="fc3")(x)
    return keras.Model(inputs, outputs, name=name)


def lenet5(input_shape=(28, 28, 1), num_classes=10, name="lenet5"):
    """LeNet-5 (Caffe): conv20 5x5, pool, conv50 5x5, pool, fc500, logits."""
    padding = "valid" if min(input_shape[:2]) >= 16 else "same"
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(20, 5, padding=padding, activation="relu", name="conv1")(
        inputs
    )
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(50, 5, padding=padding, activation="relu", name="conv2")(
        x
    )
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(500, activation="relu", name="fc1")(x)
    outputs = layers.Dense(num_classes, name="fc2")(x)
    return keras.Model(inputs, outputs, name=name)


def mobilenet_like(
    input_shape=(28, 28, 1), num_classes=10, width=32, name="mobilenet_like"
):
    """Depthwise-separable CNN: conv-BN-ReLU then 3 DW/PW blocks, GAP, head."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(width, 3, strides=2, padding="same", use_bias=False)(
        inputs
    )
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for i, multiplier in enumerate((2, 4, 4)):
        x = layers.DepthwiseConv2D(
            3, padding="same", use_bias=False, strides=2 if i == 1 else 1
        )(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.Conv2D(width * multiplier, 1, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


def small_resnet(
    input_shape=(28, 28, 1),
    num_classes=10,
    width=16,
    blocks=2,
    name="small_resnet",
):
    """A small residual CNN: stem, `blocks` basic blocks, GAP, head."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    for _ in range(blocks):
        y = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(width, 3, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes)(x)
    return keras.Model(inputs, outputs, name=name)


MODELS = {
    "lenet300": lenet300,
    "lenet5": lenet5,
    "mobilenet_like": mobilenet_like,
    "small_resnet": small_resnet,
}


def get(name, **kwargs):
    """Builds a reference model by name (a key of `MODELS`)."""
    if name not in MODELS:
        raise ValueError(
            f"zoo.get: `name` must be one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    return MODELS[name](**kwargs)
