"""keras_serene.layers: public layers."""

from keras_serene.layers.bounded_batch_normalization import (
    BoundedBatchNormalization,
)
from keras_serene.layers.bounded_batch_normalization import (
    to_plain_batch_normalization,
)
