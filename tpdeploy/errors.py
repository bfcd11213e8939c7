"""One taxonomy for everything tpdeploy raises on purpose.

The command line prints any `TpdeployError` as one line `error: ...` and exits with its `exit_code`:

- `UserError` (exit 1): a mistake in what the user asked for or gave: a missing or corrupt file, an argument
  out of range, a model that does not fit. `InvalidArgumentError` is the Python API's kind (also a
  `ValueError`, so `except ValueError` keeps working).
- `DeviceError` (exit 3): a fault of the machine or the engine (a CUDA error, a failed enqueue, a plugin that
  fails); the message says what to check. `tpdeploy serve` answers it with HTTP 500, a user's mistake with 400.
"""

from __future__ import annotations

import math
import numbers


class TpdeployError(Exception):
    exit_code = 1


class UserError(TpdeployError):
    """What the user gave or asked for is wrong; they can fix it."""


class InvalidArgumentError(UserError, ValueError):
    """An argument of the Python API outside its domain (wrong type, out of range, unknown choice)."""


class DeviceError(TpdeployError):
    """The machine, the GPU or the engine failed on valid input."""

    exit_code = 3


def one_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception from a library, for a TpdeployError message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__


def check_int(name: str, value, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` as an int: a real integer (not a bool, not 2.5), within [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise InvalidArgumentError(f"{name} must be {bounds}, got {value}")
    return value


def check_number(name: str, value, minimum: float | None = None, exclusive: bool = False) -> float:
    """`value` as a finite float, >= minimum (> minimum when exclusive)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise InvalidArgumentError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if minimum is not None and (value <= minimum if exclusive else value < minimum):
        raise InvalidArgumentError(f"{name} must be {'>' if exclusive else '>='} {minimum:g}, got {value:g}")
    return value


def check_choice(name: str, value, choices) -> str:
    if value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")
    return value
