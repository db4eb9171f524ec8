"""keras_serene.export: builtins-only LiteRT export and the model summary.

`to_tflite` converts and verifies (`tflite`), `tflite_latency` and
`run_tflite` run the flatbuffer in `ai_edge_litert`; `ks.summary` lives in
`keras_serene.export.summary`.
"""

from keras_serene.export.tflite import run_tflite
from keras_serene.export.tflite import tflite_latency
from keras_serene.export.tflite import tflite_ops
from keras_serene.export.tflite import to_tflite
