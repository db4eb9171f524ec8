"""Sensitivity pruning vs tfmot's magnitude pruning, same epoch budget.

LeNet-300-100 and LeNet-5 (Caffe) on Fashion-MNIST: LOBSTER, SeReNe and the
NeurIPS 2018 output sensitivity beside tfmot `PolynomialDecay` to 90% and
98% and the dense baseline: test accuracy, nonzero fraction, alive neurons,
slimmed size, `.tflite` bytes and latency. A view of `reproduce.py` (one
harness): the same flags, fewer methods.

    python benchmarks/vs_tfmot.py [--quick] [--out DIR]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reproduce  # noqa: E402

METHODS = "dense,lobster,serene,neurips18,tfmot90,tfmot98"

if __name__ == "__main__":
    sys.exit(reproduce.main(["--methods", METHODS, *sys.argv[1:]]))
