"""keras_serene.export: builtins-only LiteRT export and the model summary.

`to_tflite` converts and verifies (`tflite`), `run_tflite` runs the
flatbuffer in `ai_edge_litert`, `tflite_latency` and `latency_ratios` time it
(`latency`); `ks.summary` lives in `keras_serene.export.summary`.
"""

from keras_serene.export.latency import latency_ratios
from keras_serene.export.tflite import run_tflite
from keras_serene.export.tflite import tflite_latency
from keras_serene.export.tflite import tflite_ops
from keras_serene.export.tflite import to_tflite
