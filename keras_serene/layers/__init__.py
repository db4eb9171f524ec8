"""keras_serene.layers: public layers (re-exports of the method packages)."""

from keras_serene.rni.bounded_batch_normalization import (
    BoundedBatchNormalization,
)
from keras_serene.rni.bounded_batch_normalization import (
    to_plain_batch_normalization,
)
