"""LiteRT latency: one flatbuffer's median, several as ratios with a spread.

A single timing on a shared machine does not reproduce: the same three
models measured 0.0107 / 0.0097 / 0.0051 ms once and 0.0039 / 0.0053 /
0.0033 ms the next time. What does reproduce is how they compare when
measured side by side, so `latency_ratios` times every flatbuffer in turn,
`repeats` times (each time the median of `runs` invocations, interleaved so
a slowdown of the machine hits all of them alike), and reports each one's
ratio to a reference (the dense model) as the median and the min-max range
over the repeats. `keras_serene.app.report.format_latency_table` prints it
(the demo's and `keras-serene report`'s table).

`tflite_latency` is the single median (seconds), batch of one, in the
`ai_edge_litert` interpreter.

References:
    LiteRT benchmarking guide (ai.google.dev/edge/litert/models/measurement):
    warm-up runs, then the median over many invocations.
"""

import statistics
import time

import numpy as np

from keras_serene.core import checks


class _Timer:
    """One interpreter with its inputs set, ready to invoke."""

    def __init__(self, blob, num_threads, inputs, owner):
        from ai_edge_litert.interpreter import Interpreter

        checks.check_type(owner, "blob", blob, (bytes, bytearray))
        self.interpreter = Interpreter(
            model_content=bytes(blob), num_threads=num_threads
        )
        self.interpreter.allocate_tensors()
        rng = np.random.default_rng(0)
        details = self.interpreter.get_input_details()
        if inputs is not None and len(inputs) != len(details):
            checks.fail(
                owner,
                "inputs",
                f"hold one array per model input ({len(details)})",
                inputs,
            )
        for i, detail in enumerate(details):
            shape = tuple(int(d) for d in detail["shape"])
            value = (
                np.asarray(inputs[i])
                if inputs is not None
                else rng.normal(size=shape).astype("float32")
            )
            if tuple(value.shape) != shape:
                checks.fail(owner, f"inputs[{i}]", f"have shape {shape}", value)
            self.interpreter.set_tensor(
                detail["index"], value.astype(detail["dtype"])
            )

    def median(self, runs, warmup):
        for _ in range(warmup):
            self.interpreter.invoke()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.interpreter.invoke()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def _check_counts(owner, num_threads, runs, warmup):
    checks.check_int(owner, "num_threads", num_threads, minimum=1)
    checks.check_int(owner, "runs", runs, minimum=1)
    checks.check_int(owner, "warmup", warmup, minimum=0)


def tflite_latency(blob, num_threads=1, runs=50, warmup=5, inputs=None):
    """Median LiteRT invoke time (seconds) of a flatbuffer, batch of one.

    A single number: compare models with `latency_ratios` instead.

    Example:

    >>> seconds = tflite_latency(ks.to_tflite(model), num_threads=1)

    Args:
        blob: Bytes. A `.tflite` flatbuffer.
        num_threads: Int. LiteRT CPU threads. Defaults to `1`.
        runs: Int. Timed invocations (the median is returned). Defaults to
            `50`.
        warmup: Int. Untimed invocations first. Defaults to `5`.
        inputs: list of arrays or `None`. One batch-of-one array per input.
            Defaults to `None` (seeded normal noise).
    """
    _check_counts("tflite_latency", num_threads, runs, warmup)
    timer = _Timer(blob, num_threads, inputs, "tflite_latency")
    return timer.median(runs, warmup)


def latency_ratios(
    blobs, reference=None, repeats=7, runs=50, warmup=5, num_threads=1
):
    """Latencies of several flatbuffers as ratios to one, with their spread.

    Every repeat times each flatbuffer once (the median of `runs`
    invocations, after `warmup`), in turn; the ratio of a repeat is
    `t_name / t_reference` of that repeat. Ratios below 1 are faster than
    the reference.

    Example:

    ```python
    result = ks.export.latency_ratios(
        {"dense": dense_blob, "pruned": pruned_blob, "slim": slim_blob})
    result["slim"]["ratio"]          # e.g. 0.52: about twice as fast
    print(ks.report.format_latency_table(result))
    ```

    Args:
        blobs: Dict name -> `.tflite` bytes (at least one), in table order.
        reference: String or `None`. The name the ratios divide by.
            Defaults to `None` (the first name).
        repeats: Int >= 1. Interleaved measurements per flatbuffer.
            Defaults to `7`.
        runs: Int >= 1. Invocations per measurement. Defaults to `50`.
        warmup: Int >= 0. Untimed invocations before each measurement.
            Defaults to `5`.
        num_threads: Int >= 1. LiteRT CPU threads. Defaults to `1`.

    Returns:
        Dict name -> dict with `ratio`, `ratio_min`, `ratio_max` (median and
        range over the repeats of the ratio to `reference`), `latency_ms`,
        `latency_ms_min`, `latency_ms_max` (the same for the absolute
        medians, milliseconds), `repeats` and `reference`.
    """
    owner = "latency_ratios"
    if not isinstance(blobs, dict) or not blobs:
        checks.fail(owner, "blobs", "be a non-empty dict name -> bytes", blobs)
    names = list(blobs)
    reference = names[0] if reference is None else reference
    checks.check_choice(owner, "reference", reference, names)
    checks.check_int(owner, "repeats", repeats, minimum=1)
    _check_counts(owner, num_threads, runs, warmup)
    timers = {
        name: _Timer(blob, num_threads, None, owner)
        for name, blob in blobs.items()
    }
    times = {name: [] for name in names}
    for _ in range(repeats):
        for name in names:
            times[name].append(timers[name].median(runs, warmup))
    return summarize_latencies(times, reference)


def summarize_latencies(times, reference):
    """`latency_ratios`'s result from name -> per-repeat seconds (paired)."""
    ref = np.asarray(times[reference], dtype=float)
    result = {}
    for name, seconds in times.items():
        seconds = np.asarray(seconds, dtype=float)
        ratios = seconds / ref
        result[name] = {
            "ratio": float(np.median(ratios)),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "latency_ms": float(np.median(seconds) * 1e3),
            "latency_ms_min": float(seconds.min() * 1e3),
            "latency_ms_max": float(seconds.max() * 1e3),
            "repeats": int(len(seconds)),
            "reference": reference,
        }
    return result
