"""keras_serene.metrics: public metrics (re-exports only)."""

from keras_serene.psp.psp_entropy import psp_entropy
