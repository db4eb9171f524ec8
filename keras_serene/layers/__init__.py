"""keras_serene.layers: public layers (re-exports only)."""

from keras_serene.rni.bounded_batch_normalization import (
    BoundedBatchNormalization,
)
from keras_serene.rni.bounded_batch_normalization import (
    to_plain_batch_normalization,
)
