"""Importing keras_serene has no side effects; Keras 2 is refused loudly."""

import os
import subprocess
import sys

PROBE = (
    "import os, logging, warnings\n"
    "env = dict(os.environ)\n"
    "level = logging.getLogger().level\n"
    "with warnings.catch_warnings(record=True) as caught:\n"
    "    warnings.simplefilter('always')\n"
    "    import keras_serene\n"
    "assert dict(os.environ) == env, 'environment changed'\n"
    "assert logging.getLogger().level == level, 'logging changed'\n"
    "print('WARNINGS', [str(w.message) for w in caught\n"
    "                   if w.category.__name__ == 'KerasSereneWarning'])\n"
)


def _probe(extra_env):
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env.update({"TF_CPP_MIN_LOG_LEVEL": "2", **extra_env})
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_import_has_no_side_effects():
    out = _probe({})
    assert "WARNINGS []" in out, out


def test_warns_once_under_legacy_keras_flag():
    out = _probe({"TF_USE_LEGACY_KERAS": "1"})
    line = next(s for s in out.splitlines() if s.startswith("WARNINGS"))
    assert line.count("Keras 3 only") == 1, out
