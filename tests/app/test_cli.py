"""`keras-serene` starts fast and quiet: no TensorFlow for --help/--version."""

import importlib.metadata
import os
import subprocess
import sys

import keras_serene as ks
from keras_serene.app import cli

PROBE = (
    "import sys\n"
    "from keras_serene.app import cli\n"
    "try:\n"
    "    cli.main({argv!r})\n"
    "except SystemExit as e:\n"
    "    assert e.code in (0, None), e.code\n"
    "heavy = sorted(m for m in ('tensorflow', 'keras', 'numpy')\n"
    "               if m in sys.modules)\n"
    "print('HEAVY', heavy)\n"
)


def _run(code, env_extra=None, drop=("TF_CPP_MIN_LOG_LEVEL",)):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help_and_version_import_no_tensorflow():
    for argv in (["--help"], ["--version"], []):
        result = _run(PROBE.format(argv=argv))
        assert result.returncode == 0, result.stderr[-2000:]
        assert "HEAVY []" in result.stdout, (argv, result.stdout)
    assert "demo" in _run(PROBE.format(argv=["--help"])).stdout


def test_version_prints_the_package_version(capsys):
    try:
        cli.main(["--version"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"keras-serene {ks.__version__}"
    assert ks.__version__ == importlib.metadata.version("keras-serene")


def test_import_keeps_dir_clean_and_every_public_name_resolves():
    names = dir(ks)
    for private in ("os", "warnings", "sys", "importlib"):
        assert private not in names
    for name in ks.__all__:
        assert getattr(ks, name) is not None, name
    assert ks.SensitivityOptimizer.__name__ == "SensitivityOptimizer"
    assert ks.callbacks.PSPEntropyLogger.__name__ == "PSPEntropyLogger"


def test_subcommand_runs_with_tensorflow_logs_hidden():
    # `demo --help` imports TensorFlow (the demo module needs Keras); the
    # C++ start-up lines ("Could not find cuda drivers", absl's
    # "InitializeLog") must not reach the terminal.
    code = (
        "import sys\n"
        "from keras_serene.app import cli\n"
        "try:\n"
        "    cli.main(['demo', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "import os\n"
        "print('LEVEL', os.environ['TF_CPP_MIN_LOG_LEVEL'])\n"
        "print('TF', 'tensorflow' in sys.modules)\n"
        # LiteRT's XNNPACK banner was spent while stderr was silenced.
        "import keras, keras_serene as ks\n"
        "m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])\n"
        "print('LATENCY', ks.export.tflite_latency(ks.to_tflite(m)) > 0)\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "--quick" in result.stdout
    assert "LEVEL 3" in result.stdout and "TF True" in result.stdout
    assert "LATENCY True" in result.stdout
    assert result.stderr.strip() == "", result.stderr[-2000:]


def test_verbose_keeps_the_users_log_level():
    code = (
        "from keras_serene.app import cli\n"
        "import os\n"
        "try:\n"
        "    cli.main(['--verbose', 'demo', '--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print('LEVEL', os.environ.get('TF_CPP_MIN_LOG_LEVEL'))\n"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LEVEL None" in result.stdout
    result = _run(
        code.replace("'--verbose', ", ""), {"TF_CPP_MIN_LOG_LEVEL": "1"}
    )
    assert "LEVEL 1" in result.stdout  # A level the user set is kept.


def test_unknown_global_flag_is_an_error():
    result = _run(PROBE.format(argv=["--nope"]))
    assert result.returncode != 0
    assert "unrecognized arguments: --nope" in result.stderr


SAVE = """
import keras
import keras_serene as ks
model = keras.Sequential(
    [keras.Input((4, 4, 2)), ks.layers.BoundedBatchNormalization()]
)
model.save({path!r})
"""

LOAD = """
{imports}
keras.models.load_model({path!r})
print("LOADED")
"""


def test_lazy_names_still_register_every_class_for_loading(tmp_path):
    # Lazy imports must not cost users the registration of keras_serene's
    # classes: with Keras imported first (isort's order) or after any use of
    # a `ks.` name, a `.keras` file with keras_serene layers loads.
    path = str(tmp_path / "bounded.keras")
    env = {"TF_CPP_MIN_LOG_LEVEL": "3"}
    result = _run(SAVE.format(path=path), env)
    assert result.returncode == 0, result.stderr[-2000:]
    for imports in (
        "import keras\nimport keras_serene",
        "import keras_serene as ks\nks.summary\nimport keras",
    ):
        result = _run(LOAD.format(imports=imports, path=path), env)
        assert result.returncode == 0, (imports, result.stderr[-2000:])
        assert "LOADED" in result.stdout
