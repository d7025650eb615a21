"""Argument types of the ``wsi-mil`` command's numeric options, checked as they are parsed.

A bad value (``--workers -2``, ``--patch-size 0``, ``--overlap nan``) stops argparse with
exit status 2 and a message naming the option, before any config is loaded or any work
starts, as config keys are checked on load (wsi_mil.config).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(
    kind: type,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    what: str,
) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number ({what})")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


#: Counts: worker processes or threads, where 0 has a meaning (no Dask, no threads).
non_negative_int = _number(int, low=0, what="an integer >= 0")
#: Sizes and counts that must be at least 1 (batch size, folds, epochs).
positive_int = _number(int, low=1, what="an integer >= 1")
#: Physical sizes and magnifications (um/px, x, seconds).
positive_float = _number(float, low=0.0, low_open=True, what="a number > 0")
#: Widths that may be 0 (a smoothing sigma).
non_negative_float = _number(float, low=0.0, what="a number >= 0")
#: Fractions in [0, 1] (tissue threshold, alpha).
fraction = _number(float, low=0.0, high=1.0, what="a number in [0, 1]")
#: Fractions in [0, 1) (overlap).
open_fraction = _number(float, low=0.0, high=1.0, high_open=True, what="a number in [0, 1)")
#: Any finite number (a colour range's ends).
finite_float = _number(float, what="a finite number")
#: Any integer (a random seed).
any_int = _number(int, what="an integer")
#: Patch sides in pixels (the tiling config's minimum).
patch_size = _number(int, low=8, what="an integer >= 8")
#: k of k-fold cross-validation.
fold_count = _number(int, low=2, what="an integer >= 2")
