"""NHS number check digits, vectorised, for the generator and for validation of whole columns.

The rule (NHS Data Dictionary): weights 10..2 on digits 1-9, remainder mod 11, check = 11 - remainder,
11 becomes 0 and 10 means no valid number exists with those nine digits. NHS England's receiving
side (``is_valid_nhs_number`` in nhsengland/Reusable-Code-Library ``src/dsp/udfs/misc.py``) also rejects
numbers whose first five digits mirror the last five (e.g. ``1234554321``, ``0000000000``) and has no
date-of-birth rule for Scotland's CHI range. The scalar ``nhs-number`` package differs in exactly those two
places; tests/unit/test_nhs_numbers.py names them. This module exists because a national-size month has
millions of numbers and a Python loop over them is too slow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

_WEIGHTS = np.arange(10, 1, -1)


def check_digits(first_nine: np.ndarray) -> np.ndarray:
    """Check digit for each 9-digit integer; -1 where no valid check digit exists (remainder 10)."""
    digits = (first_nine[:, None] // (10 ** np.arange(8, -1, -1))) % 10
    total = digits @ _WEIGHTS
    check = 11 - (total % 11)
    check = np.where(check == 11, 0, check)
    return np.where(check == 10, -1, check)


def valid_mask(numbers: pd.Series) -> np.ndarray:
    """True where the value is a valid 10-digit NHS number (check digit and not mirrored).

    Accepts strings with missing values; anything not exactly ten digits is invalid.
    """
    s = numbers.astype("string").fillna("")
    ok = s.str.fullmatch(r"\d{10}").fillna(False).to_numpy(dtype=bool)
    out = np.zeros(len(s), dtype=bool)
    if not ok.any():
        return out
    vals = s[ok].astype("int64").to_numpy()
    first_nine = vals // 10
    last = vals % 10
    good = check_digits(first_nine) == last
    text = s[ok].to_numpy(dtype=object)
    mirrored = np.fromiter((t[:5] == t[:4:-1] for t in text), dtype=bool, count=len(text))
    out[ok] = good & ~mirrored & (vals != 0)
    return out


def synthetic_numbers(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct valid NHS numbers in the 999 synthetic range, as 10-char strings."""
    if count > 800_000:
        raise ValueError("the 999 range holds about 900,000 valid numbers; ask for fewer")
    bases = 999_000_000 + rng.choice(1_000_000, size=min(1_000_000, int(count * 1.25) + 100), replace=False)
    checks = check_digits(bases)
    nums = bases[checks >= 0] * 10 + checks[checks >= 0]
    text: np.ndarray = nums.astype(str)
    mirrored = np.fromiter((t[:5] == t[:4:-1] for t in text), dtype=bool, count=len(text))
    text = text[~mirrored]
    if len(text) < count:  # pragma: no cover - only for counts near the range's size
        raise ValueError("not enough synthetic NHS numbers")
    return text[:count]
