"""keras_serene.metrics: public metrics (re-exports of the method packages)."""
from keras_serene.psp.psp_entropy import psp_entropy
