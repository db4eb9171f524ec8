"""keras_serene.callbacks: public callbacks."""
from keras_serene.callbacks.psp_entropy_logger import PSPEntropyLogger
