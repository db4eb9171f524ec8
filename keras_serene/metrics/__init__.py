"""keras_serene.metrics: public metrics."""
from keras_serene.metrics.psp_entropy import psp_entropy
