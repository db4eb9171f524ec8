"""The README's first snippet runs as a user would paste it."""

import os
import pathlib
import re

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _flow_snippet():
    text = (ROOT / "README.md").read_text()
    section = text.split("## The flow", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_flow_snippet_runs_and_prunes_to_its_target(tmp_path):
    # The user's `x, y`: a few hundred Fashion-MNIST-shaped images.
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(300, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, size=300)
    namespace = {"x": x, "y": y}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(_flow_snippet(), "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    history, model = namespace["history"], namespace["model"]
    small = namespace["small"]
    assert history.history["sparsity"][-1] >= 0.975  # the 98% target, held
    assert small.count_params() < model.count_params()
    assert os.path.getsize(tmp_path / "model.tflite") == len(namespace["blob"])
    np.testing.assert_allclose(
        small.predict(x[:16], verbose=0),
        namespace["ks"].strip_masks(model).predict(x[:16], verbose=0),
        rtol=1e-4,
        atol=1e-5,
    )
