"""One error hierarchy for wsi-mil.

Every class also inherits the builtin it refines, so callers that catch
``OSError`` or ``ValueError`` keep working. Messages say what went wrong,
which file, and what to do about it.
"""

from __future__ import annotations


class WsiMilError(Exception):
    """Base class of every error wsi-mil raises on purpose."""


class SlideOpenError(WsiMilError, OSError):
    """No reader could open the file as a slide."""


class SlideReadError(WsiMilError, OSError):
    """The slide opened, but its pixels could not be decoded."""


class MissingMPPError(WsiMilError, ValueError):
    """The tiling asks for a physical resolution and the slide has no usable MPP."""


class ConfigError(WsiMilError, ValueError):
    """A configuration key is unknown, of the wrong type or out of range."""


class DuplicateSlideIdError(WsiMilError, ValueError):
    """Two input slides map to the same slide id."""


class BagFormatError(WsiMilError, ValueError):
    """A bag file is missing datasets or attributes the contract requires."""


class LabelError(WsiMilError, ValueError):
    """A labels CSV is malformed, matches no feature files, or cannot support the asked-for splits."""


class FeatureFormatError(WsiMilError, ValueError):
    """Feature files are unreadable, hold NaN/inf values, or disagree on the feature dimension."""


class UnsafeSlideIdError(WsiMilError, ValueError):
    """A slide id could not be a plain file name inside the run folder (separators, ``..``, control characters)."""


class SlideMismatchError(WsiMilError, ValueError):
    """The slide on disk is not the one the bag was made from."""


class SlideTooLargeError(WsiMilError, ValueError):
    """A slide's header claims more pixels than its file could hold, or more than a bounded read allows."""


class SlideTimeoutError(WsiMilError, TimeoutError):
    """One slide took longer than the per-slide time limit."""
