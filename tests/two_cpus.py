"""Runs a test script on two logical CPU devices, in a process of its own.

`tf.distribute.MirroredStrategy` tests need two devices, and logical devices
can only be configured before TensorFlow initialises them: the main pytest
process must keep the default, so each such test runs its script here.
"""

import subprocess
import sys
import textwrap

_PREAMBLE = """\
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
"""
_DONE = "TWO_CPUS_SCRIPT_DONE"


def run_on_two_cpus(script, timeout=300):
    """Runs `script` (source text) with two logical CPUs; fails on error.

    The script signals nothing itself: reaching its end is success, and any
    exception or failed assertion in it fails the calling test with the
    script's output.
    """
    code = _PREAMBLE + textwrap.dedent(script) + f"\nprint({_DONE!r})\n"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert _DONE in result.stdout, result.stdout[-2000:] + result.stderr[-3000:]
