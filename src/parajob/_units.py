"""Sizes given as numbers or strings ("1M", "500K", "2GiB"), parsed one way everywhere."""

from __future__ import annotations

import numbers
import re

from parajob.errors import InvalidParameterError

__all__ = ["parse_size"]

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_size(value: int | str | None, name: str) -> int | None:
    """Return ``value`` in bytes: an int, or a string with a K, M, G or T suffix (powers of
    1024, an optional "B" or "iB" after it); None stays None.

    Raises :class:`~parajob.errors.InvalidParameterError` naming ``name`` and the value.
    """
    if value is None:
        return None
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        if value < 0:
            raise InvalidParameterError(
                f"{name} must be >= 0 bytes, got {value}; use None for no limit"
            )
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise InvalidParameterError(
        f"{name} must be an int number of bytes or a size string such as '500K', '1M' or "
        f"'2G', got {value!r}"
    )
