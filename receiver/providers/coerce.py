"""Tolerant readers for providers' loose values: numbers as strings, "40%", 0..1 or 0..100."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["as_float", "as_str", "progress"]


def as_str(value: Any) -> str | None:
    """A non-empty string, or None; numbers become their text."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return None


def as_float(value: Any) -> float | None:
    """A finite float from a number or numeric string ("40", "40%", " 0.5 "), else None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        value = value.strip().rstrip("%").strip()
        if not value:
            return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def progress(value: Any, *, percent: bool | None = None) -> float | None:
    """Progress as a fraction 0..1.

    `percent=True` reads the value as 0..100, `False` as 0..1, and None guesses: a value
    above 1, a "%" sign or an integer is a percentage, a fraction below 1 is a fraction.
    """
    number = as_float(value)
    if number is None:
        return None
    if percent is None:
        is_text_percent = isinstance(value, str) and "%" in value
        looks_integral = isinstance(value, int) or (isinstance(value, str) and "." not in value)
        percent = number > 1 or is_text_percent or (looks_integral and number != 0)
    fraction = number / 100 if percent else number
    return min(1.0, max(0.0, fraction))
