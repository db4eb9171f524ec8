"""Argument validators shared by every public constructor and function.

One error format everywhere (Keras's own, e.g. `ReduceLROnPlateau`):

    Class: `arg` must <what is allowed>. Received: arg=<value>

`owner` is the class or function name the user called (`"PSPEntropyLogger"`,
`"to_tflite"`). Values are shown short: arrays and tensors by type, shape and
dtype (never their contents), other values by a `repr` cut at 80 characters,
so an error never dumps a dataset into the terminal.

The checks return the value converted (`check_number` returns a float,
`check_int` an int), so a caller validates and converts in one line:

    self.decay = checks.check_number("SensitivityOptimizer", "decay", decay,
                                     minimum=0.0)
"""

import math
import numbers
import re

import numpy as np

_MAX_REPR = 80


def describe(value):
    """A short, safe text for `value` in an error message."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (numbers.Number, str)):
        dtype = getattr(value, "dtype", None)
        try:
            shape = tuple(None if d is None else int(d) for d in shape)
        except TypeError:
            pass
        text = f"<{type(value).__name__} shape={shape}"
        return text + (f" dtype={dtype}>" if dtype is not None else ">")
    if isinstance(value, (list, tuple)) and any(
        getattr(v, "shape", None) is not None for v in value
    ):
        inner = ", ".join(describe(v) for v in value[:4])
        more = ", ..." if len(value) > 4 else ""
        return f"{type(value).__name__}({inner}{more})"
    text = repr(value)
    if len(text) > _MAX_REPR:
        text = text[: _MAX_REPR - 3] + "..."
    return text


def fail(owner, arg, must, value, error=ValueError):
    """Raises `error` with the house format; `must` completes "`arg` must"."""
    raise error(
        f"{owner}: `{arg}` must {must}. Received: {arg}={describe(value)}"
    )


def check_type(owner, arg, value, types, must=None):
    """`value` is an instance of `types` (a class or tuple), else TypeError."""
    if isinstance(value, types):
        return value
    if must is None:
        names = types if isinstance(types, tuple) else (types,)
        must = "be " + " or ".join(t.__name__ for t in names)
    fail(owner, arg, f"{must} (got {type(value).__name__})", value, TypeError)


def check_bool(owner, arg, value):
    """`value` is `True` or `False` (not 0/1, not a string)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    fail(owner, arg, "be a bool (True or False)", value, TypeError)


def check_choice(owner, arg, value, choices):
    """`value` is one of `choices` (compared with `==`)."""
    try:
        if value in choices:
            return value
    except TypeError:
        pass
    fail(owner, arg, f"be one of {list(choices)!r}", value)


def _range_text(minimum, maximum, min_inclusive, max_inclusive):
    parts = []
    if minimum is not None:
        parts.append(f"{'>=' if min_inclusive else '>'} {minimum}")
    if maximum is not None:
        parts.append(f"{'<=' if max_inclusive else '<'} {maximum}")
    return " and ".join(parts)


def _in_range(value, minimum, maximum, min_inclusive, max_inclusive):
    if minimum is not None and (
        value < minimum if min_inclusive else value <= minimum
    ):
        return False
    if maximum is not None and (
        value > maximum if max_inclusive else value >= maximum
    ):
        return False
    return True


def check_number(
    owner,
    arg,
    value,
    minimum=None,
    maximum=None,
    min_inclusive=True,
    max_inclusive=True,
    allow_none=False,
):
    """A finite real number in the range; returns it as a float.

    Booleans, strings, nan and inf are refused (TypeError for the type,
    ValueError for the value).
    """
    if value is None and allow_none:
        return None
    kind = "a finite number" + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, numbers.Real
    ):
        fail(owner, arg, f"be {kind}", value, TypeError)
    number = float(value)
    limits = _range_text(minimum, maximum, min_inclusive, max_inclusive)
    if not math.isfinite(number):
        fail(
            owner, arg, f"be {kind}" + (f", {limits}" if limits else ""), value
        )
    if not _in_range(number, minimum, maximum, min_inclusive, max_inclusive):
        fail(owner, arg, f"be {limits}", value)
    return number


def check_int(owner, arg, value, minimum=None, maximum=None, allow_none=False):
    """An integer (Python or NumPy, not bool) in `[minimum, maximum]`."""
    if value is None and allow_none:
        return None
    kind = "an int" + (" or None" if allow_none else "")
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, numbers.Integral
    ):
        fail(owner, arg, f"be {kind}", value, TypeError)
    if not _in_range(int(value), minimum, maximum, True, True):
        fail(
            owner,
            arg,
            f"be {kind} {_range_text(minimum, maximum, 1, 1)}",
            value,
        )
    return int(value)


def check_names(owner, arg, value, allow_none=True):
    """A list/tuple of strings (e.g. layer names); returns a list."""
    if value is None and allow_none:
        return None
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, str) for v in value
    ):
        return list(value)
    must = "be a list of strings" + (" or None" if allow_none else "")
    fail(owner, arg, must, value, TypeError)


def check_patterns(owner, arg, value):
    """A list of regex strings (`re.search` over variable paths, as Keras's
    `exclude_from_weight_decay`); `None` is `[]`. Returns a list."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        fail(owner, arg, "be a list of regex strings", value, TypeError)
    for pattern in value:
        if not isinstance(pattern, str):
            fail(owner, arg, "be a list of regex strings", value, TypeError)
        try:
            re.compile(pattern)
        except re.error as error:
            fail(
                owner, arg, f"hold valid regexes ({pattern!r}: {error})", value
            )
    return list(value)


def check_same_length(owner, arg, arrays, names=("x", "y"), shown=None):
    """Every array in `arrays` has the same first dimension; returns it.

    `arg` names the argument holding them (`validation_data`), `names` the
    parts, so the message reads "`validation_data` must hold as many
    samples in x as in y". `shown` is the value the message shows
    (defaults to `arrays`).
    """
    shown = arrays if shown is None else shown
    lengths = []
    for array in arrays:
        try:
            lengths.append(len(array))
        except TypeError:
            fail(owner, arg, "hold arrays with a first (sample) axis", shown)
    if len(set(lengths)) > 1:
        counts = ", ".join(
            f"{n}: {count}" for n, count in zip(names, lengths, strict=False)
        )
        fail(
            owner,
            arg,
            f"hold as many samples in {' as in '.join(names)} ({counts})",
            shown,
        )
    return lengths[0] if lengths else 0


def check_sample_shape(owner, arg, array, expected):
    """`array.shape[1:]` matches `expected` (None matches any size)."""
    shape = tuple(np.shape(array))
    expected = tuple(expected)
    ok = len(shape) == len(expected) + 1 and all(
        e is None or int(e) == s
        for e, s in zip(expected, shape[1:], strict=True)
    )
    if not ok:
        want = ("batch",) + tuple(
            "any" if e is None else int(e) for e in expected
        )
        fail(
            owner,
            arg,
            f"have shape {want} (a batch of model inputs)".replace("'", ""),
            array,
        )
    return array
