"""keras_serene.core.checks: one error format, values shown short."""

import numpy as np
import pytest

from keras_serene.core import checks


def test_number_checks_convert_and_refuse_nan_inf_bool():
    assert checks.check_number("C", "a", 3) == 3.0
    assert isinstance(checks.check_number("C", "a", np.float32(0.5)), float)
    assert checks.check_number("C", "a", None, allow_none=True) is None
    with pytest.raises(
        ValueError,
        match=r"^C: `a` must be a finite number, >= 0\.0\. Received: a=nan$",
    ):
        checks.check_number("C", "a", float("nan"), minimum=0.0)
    with pytest.raises(ValueError, match=r"Received: a=inf$"):
        checks.check_number("C", "a", float("inf"))
    with pytest.raises(TypeError, match=r"^C: `a` must be a finite number\. "):
        checks.check_number("C", "a", True)
    with pytest.raises(TypeError, match=r"Received: a='1'$"):
        checks.check_number("C", "a", "1")


def test_number_ranges_inclusive_and_exclusive():
    assert checks.check_number("C", "r", 0.0, minimum=0.0) == 0.0
    with pytest.raises(ValueError, match=r"`r` must be > 0\.0\. Received: r=0"):
        checks.check_number("C", "r", 0, minimum=0.0, min_inclusive=False)
    with pytest.raises(
        ValueError, match=r"`r` must be >= 0\.0 and < 1\.0\. Received: r=1\.0"
    ):
        checks.check_number(
            "C", "r", 1.0, minimum=0.0, maximum=1.0, max_inclusive=False
        )
    assert checks.check_number("C", "r", 1.0, maximum=1.0) == 1.0


def test_int_checks():
    assert checks.check_int("C", "n", np.int64(4), minimum=1) == 4
    assert checks.check_int("C", "n", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"`n` must be an int >= 1\. Received"):
        checks.check_int("C", "n", 0, minimum=1)
    with pytest.raises(
        TypeError, match=r"`n` must be an int\. Received: n=2\.0"
    ):
        checks.check_int("C", "n", 2.0)
    with pytest.raises(TypeError, match="Received: n=False"):
        checks.check_int("C", "n", False)
    with pytest.raises(ValueError, match=r">= 1 and <= 3\. Received: n=4"):
        checks.check_int("C", "n", 4, minimum=1, maximum=3)


def test_bool_choice_type_names():
    assert checks.check_bool("C", "b", np.bool_(True)) is True
    with pytest.raises(TypeError, match=r"`b` must be a bool .*Received: b=1"):
        checks.check_bool("C", "b", 1)
    assert checks.check_choice("C", "m", "x", ("x", "y")) == "x"
    with pytest.raises(
        ValueError, match=r"`m` must be one of \['x', 'y'\]\. Received: m='z'"
    ):
        checks.check_choice("C", "m", "z", ("x", "y"))
    with pytest.raises(ValueError, match="Received: m=\\[1\\]"):
        checks.check_choice("C", "m", [1], ("x",))  # unhashable: no crash
    with pytest.raises(TypeError, match=r"`p` must be str \(got int\)"):
        checks.check_type("C", "p", 3, str)
    assert checks.check_names("C", "l", ("a", "b")) == ["a", "b"]
    with pytest.raises(TypeError, match="Received: l='ab'"):
        checks.check_names("C", "l", "ab")


def test_arrays_are_described_by_shape_never_dumped():
    big = np.zeros((1000, 28, 28, 1), dtype="float32")
    text = checks.describe(big)
    assert text == "<ndarray shape=(1000, 28, 28, 1) dtype=float32>"
    pair = checks.describe((big, np.zeros(5, "int64")))
    assert pair == (
        "tuple(<ndarray shape=(1000, 28, 28, 1) dtype=float32>, "
        "<ndarray shape=(5,) dtype=int64>)"
    )
    long_text = checks.describe("x" * 500)
    assert len(long_text) == 80 and long_text.endswith("...")
    assert checks.describe(3) == "3"


def test_lengths_and_sample_shapes():
    x, y = np.zeros((10, 3)), np.zeros(9)
    with pytest.raises(
        ValueError,
        match=r"^C: `data` must hold as many samples in x as in y "
        r"\(x: 10, y: 9\)\. Received: data=tuple\(",
    ):
        checks.check_same_length("C", "data", (x, y))
    assert checks.check_same_length("C", "data", (x, x)) == 10
    checks.check_sample_shape("C", "d", x, (3,))
    checks.check_sample_shape("C", "d", x, (None,))
    with pytest.raises(
        ValueError,
        match=r"`d` must have shape \(batch, 4\) .*Received: d=<ndarray "
        r"shape=\(10, 3\)",
    ):
        checks.check_sample_shape("C", "d", x, (4,))
    with pytest.raises(ValueError, match=r"\(batch, 3, any\)"):
        checks.check_sample_shape("C", "d", x, (3, None))
