"""The reader protocol every slide backend implements, and their shared base class.

The protocol is OpenSlide's, with two deliberate differences: ``read_region``
returns RGB (transparent areas composited on the slide's background, white by
default) rather than RGBA, and it can return a NumPy array (``as_array=True``).
Backend failures surface as :class:`~wsi_mil.errors.SlideReadError` naming the
file, never as a library's own exception.
"""

from __future__ import annotations

import abc
import math
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Literal, Protocol, overload, runtime_checkable

import numpy as np
from PIL import Image

from wsi_mil.errors import SlideReadError, SlideTimeoutError
from wsi_mil.io.mpp import MppInfo, resolve_mpp


@runtime_checkable
class SlideReader(Protocol):
    """What the pipeline needs from a slide, shaped like ``openslide.OpenSlide``."""

    path: Path

    @property
    def backend(self) -> str: ...
    @property
    def dimensions(self) -> tuple[int, int]: ...
    @property
    def level_count(self) -> int: ...
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...
    @property
    def level_downsamples(self) -> tuple[float, ...]: ...
    @property
    def mpp(self) -> float | None: ...
    @property
    def objective_power(self) -> float | None: ...
    @property
    def properties(self) -> Mapping[str, Any]: ...

    @overload
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, as_array: Literal[False] = ...
    ) -> Image.Image: ...
    @overload
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, as_array: Literal[True]
    ) -> np.ndarray: ...
    def get_best_level_for_downsample(self, downsample: float) -> int: ...
    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image: ...
    def close(self) -> None: ...


def composite_on_background(rgba: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """(H, W, 4) uint8 RGBA -> (H, W, 3) uint8 RGB over an opaque background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    weight = alpha[..., None].astype(np.float32) / 255.0
    back = np.asarray(background, dtype=np.float32)
    return (rgb * weight + back * (1.0 - weight) + 0.5).astype(np.uint8)


def to_rgb_uint8(array: np.ndarray, background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Any (H, W), (H, W, 1|3|4) image array -> (H, W, 3) uint8."""
    if array.dtype != np.uint8:
        from skimage.util import img_as_ubyte

        array = img_as_ubyte(array)
    if array.ndim == 2:
        array = array[..., None]
    channels = array.shape[-1]
    if channels == 1:
        return np.repeat(array, 3, axis=-1)
    if channels == 2:  # grey + alpha
        array = np.concatenate([np.repeat(array[..., :1], 3, axis=-1), array[..., 1:]], axis=-1)
        channels = 4
    if channels == 4:
        return composite_on_background(array, background)
    return np.ascontiguousarray(array[..., :3])


def _fit(size: tuple[int, int], box: tuple[int, int]) -> tuple[int, int]:
    """``size`` scaled down to fit in ``box`` keeping its aspect ratio, as ``PIL.Image.thumbnail`` rounds."""
    width, height = size
    x, y = box
    if x >= width and y >= height:
        return width, height
    aspect = width / height

    def round_aspect(number: float, key: Any) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if x / y >= aspect:
        return round_aspect(y * aspect, key=lambda n: abs(aspect - n / y)), y
    return x, round_aspect(x / aspect, key=lambda n: 0 if n == 0 else abs(aspect - x / n))


class BaseReader(abc.ABC):
    """Shared behaviour of the backends: MPP, thumbnails, context management, errors."""

    backend: ClassVar[str]

    def __init__(self, path: str | Path, *, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self._mpp_override = mpp_override
        self._mpp_info: MppInfo | None = None
        self._deadline: float | None = None
        self._time_limit: float | None = None

    # --- what each backend provides -------------------------------------------------
    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]: ...

    @property
    @abc.abstractmethod
    def properties(self) -> Mapping[str, Any]: ...

    @abc.abstractmethod
    def _read_rgb(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read (h, w, 3) uint8 RGB; location in level-0 pixels, size at ``level``."""

    @abc.abstractmethod
    def close(self) -> None: ...

    # --- shared ---------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def mpp_info(self) -> MppInfo:
        if self._mpp_info is None:
            self._mpp_info = resolve_mpp(self.properties, override=self._mpp_override, slide_name=self.path.name)
        return self._mpp_info

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel, or None when no usable value is known."""
        return self.mpp_info.mpp

    @property
    def objective_power(self) -> float | None:
        for key in ("openslide.objective-power", "tiffslide.objective-power", "aperio.AppMag"):
            try:
                return float(self.properties[key])
            except (KeyError, TypeError, ValueError):
                continue
        return None

    @property
    def background(self) -> tuple[int, int, int]:
        color = str(self.properties.get("openslide.background-color") or "FFFFFF")
        try:
            return (int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16))
        except ValueError:
            return (255, 255, 255)

    @overload
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, as_array: Literal[False] = ...
    ) -> Image.Image: ...
    @overload
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, as_array: Literal[True]
    ) -> np.ndarray: ...
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int], *, as_array: bool = False
    ) -> Image.Image | np.ndarray:
        """Read an RGB region: ``location`` in level-0 pixels, ``size`` (w, h) at ``level``."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path.name}: level {level} out of range 0..{self.level_count - 1}")
        self.check_deadline()
        try:
            rgb = self._read_rgb((int(location[0]), int(location[1])), level, (int(size[0]), int(size[1])))
        except SlideReadError:
            raise
        except Exception as error:  # backend libraries raise their own types
            raise self.decode_error(f"{tuple(location)} level {level}", error) from error
        return rgb if as_array else Image.fromarray(rgb)

    def decode_error(self, where: str, error: Exception) -> SlideReadError:
        """The error for pixels at ``where`` that the backend could not decode."""
        return SlideReadError(
            f"{self.path}: could not decode pixels at {where} ({type(error).__name__}: {error}). "
            "The file is damaged or uses an unsupported compression; re-copy or re-export it."
        )

    def read_level_region(self, level: int, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 of ``level`` from ``location`` in that level's own pixels.

        A backend that decodes the level's tiles itself returns an exact crop of the level;
        the default goes through :meth:`read_region` (OpenSlide resamples a region read off
        the origin of a level whose downsample is not an integer)."""
        downsample = self.level_downsamples[level]
        origin = (int(round(location[0] * downsample)), int(round(location[1] * downsample)))
        return self.read_region(origin, level, size, as_array=True)

    def set_time_limit(self, seconds: float | None, *, elapsed: float = 0.0) -> None:
        """Reads raise :class:`SlideTimeoutError` once ``seconds`` have passed, of which ``elapsed``
        already have (time spent on the slide before this call); None: no limit."""
        self._time_limit = seconds
        self._deadline = None if seconds is None else time.monotonic() + seconds - elapsed

    def check_deadline(self) -> None:
        """Raise :class:`SlideTimeoutError` when the time limit set by :meth:`set_time_limit` has passed."""
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise SlideTimeoutError(
                f"{self.path}: stopped after the per-slide time limit of {self._time_limit:g} s "
                "(tiling.slide_timeout); the file is pathological or very large. Raise the limit, or check the file."
            )

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The coarsest level whose downsample does not exceed ``downsample`` (1% slack)."""
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * 1.01:
                best = level
        return best

    def get_thumbnail(self, size: tuple[int, int]) -> Image.Image:
        """An RGB thumbnail that fits in ``size``, read from the best pyramid level.

        A bounded read (:func:`wsi_mil.io.bounded.read_level_reduced`): block by block,
        undecodable tiles shown as background, a level too large for a thumbnail refused.
        """
        from wsi_mil.io.bounded import read_level_reduced

        width, height = self.dimensions
        downsample = max(width / size[0], height / size[1], 1.0)
        level = self.get_best_level_for_downsample(downsample)
        factor = max(1, int(math.floor(downsample / self.level_downsamples[level] + 1e-6)))
        image = Image.fromarray(read_level_reduced(self, level, factor, max_unreadable=1.0).rgb)
        box = (max(1, int(width / downsample)), max(1, int(height / downsample)))
        target = _fit(self.level_dimensions[level], box)  # the size a thumbnail of the whole level would have
        return image if image.size == target else image.resize(target, Image.Resampling.BOX)

    def __enter__(self) -> BaseReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
