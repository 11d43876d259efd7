"""Money is an ``int`` in neuron (wei) everywhere; 1 0G = 10**18 neuron.

Decimal strings appear only at the JSON edge (:func:`to_wire`, :func:`parse`).
"""

from __future__ import annotations

from decimal import Decimal

NEURON_PER_OG = 10**18
OG = NEURON_PER_OG


def parse(value: int | str) -> int:
    """Parse a neuron amount given as int or decimal string; floats are refused."""
    if isinstance(value, bool):
        raise TypeError("a boolean is not an amount")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative amount: {value}")
        return value
    if isinstance(value, str):
        text = value.strip()
        if not text.isdigit():
            raise ValueError(f"not a non-negative integer amount in neuron: {value!r}")
        return int(text)
    raise TypeError(f"amounts are int or decimal strings, not {type(value).__name__}")


def og(amount: int | str) -> int:
    """Whole or fractional 0G given as text ("1.5") or int, converted exactly to neuron."""
    d = Decimal(str(amount)) * NEURON_PER_OG
    if d != d.to_integral_value():
        raise ValueError(f"{amount} 0G is not a whole number of neuron")
    return int(d)


def to_wire(amount: int) -> str:
    """A neuron amount as the decimal string used in JSON."""
    return str(int(amount))


def fmt_og(amount: int) -> str:
    """Human display: neuron as 0G with up to 18 decimals, trailing zeros trimmed."""
    whole, frac = divmod(int(amount), NEURON_PER_OG)
    if frac == 0:
        return f"{whole} 0G"
    return f"{whole}.{frac:018d}".rstrip("0") + " 0G"
