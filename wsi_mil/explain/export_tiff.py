"""Pyramidal tiled TIFFs that Bio-Formats (QuPath), OpenSlide and tiffslide all open as a
pyramid aligned with the slide, with the slide's pixel size.

Layout: an OME-TIFF whose page 0 is the full-size level (the slide's level-0 size, so
the file overlays the slide pixel for pixel) with the reduced levels twice:
- as SubIFDs of page 0, which is how OME-TIFF stores a pyramid: Bio-Formats (QuPath's
  reader), tifffile and tiffslide read these; Bio-Formats sees top-level reduced pages
  as nothing (a plain TIFF's ``NewSubfileType = 1`` pages leave it one flat level);
- as top-level pages marked ``NewSubfileType = 1``: OpenSlide's ``generic-tiff`` driver
  reads only these (it ignores SubIFDs). The OME-XML names IFD 0 only, so Bio-Formats
  and tifffile leave them alone.
The second copy is the same encoded tiles, spooled to a temporary file while the first
is written (nothing is painted or compressed twice); it adds about a third of level 0's
size. All levels are tiled 256 x 256 with ``XResolution``/``YResolution`` in pixels per
centimetre (OpenSlide's and tiffslide's ``mpp``), and the OME-XML carries
``PhysicalSizeX/Y`` in micrometres (Bio-Formats' pixel size). The provenance text goes
into the OME ``Image/Description``, with paths relative to the run directory.

Pixel types (see :func:`write_pyramid_tiff`):
- float32, one sample, deflate: the scores themselves, NaN for no data. tiffslide,
  tifffile, napari and QuPath (Bio-Formats) read it; OpenSlide cannot decode 32-bit
  samples (``TIFFRGBAImageOK``), so for OpenSlide use the RGBA variant.
- uint8 RGBA, deflate: colour-mapped scores, alpha 0 for no data. Every reader,
  OpenSlide included.
- uint8 RGB, JPEG: the colour map blended with the slide (level-0 overlay).

A level is either a lazy Dask canvas, computed one row of tiles at a time (the next
row is computed while the current one is written), or a :class:`TileSource` that makes
each tile on demand and says which tiles have no data. A tile source is written tile by
tile through a thread pool with a bounded window, so memory holds a few tiles whatever
the slide's size, and its no-data tiles (most of a level-0 heatmap) are one shared,
pre-encoded tile: nothing is painted, checked or compressed for them.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol, overload, runtime_checkable
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

TILE = 256
#: Stop adding levels once a level fits in this many pixels per side.
MIN_LEVEL_SIDE = 512
#: Deflate level of float32/RGBA tiles with data: level 1 is ~2x faster than 6 (the tiles
#: are runs of one value per patch; 6 would save ~1 kB a tile).
DEFLATE_LEVEL = 1
#: The shared no-data tile is encoded once, so it gets the best ratio: 281 bytes instead of
#: 1.3 kB for a NaN float32 tile, written thousands of times at level 0.
EMPTY_DEFLATE_LEVEL = 9
JPEG_QUALITY = 85
#: Tiles being made or encoded at once per worker thread (bounds a tile source's memory).
TILES_IN_FLIGHT_PER_THREAD = 4


@runtime_checkable
class TileSource(Protocol):
    """One pyramid level made tile by tile; tile (row, col) covers ``[row*T, (row+1)*T) x [col*T, ...)``.

    ``tile`` returns the (h, w[, S]) pixels (edge tiles may be short; they are padded),
    or bytes already encoded for this level's compression. Tiles where ``has_data`` is
    false are not asked for: the level's shared no-data tile is written instead.
    """

    shape: tuple[int, ...]

    def has_data(self, row: int, col: int) -> bool: ...

    def tile(self, row: int, col: int) -> np.ndarray | bytes: ...


@dataclass(frozen=True)
class JpegLayout:
    """How a JPEG level is encoded: tifffile's default (YCbCr, 2x2 chroma) or a slide's own.

    A level that copies a slide's stored JPEG tiles takes that slide level's layout, so the
    tiles it encodes itself and the copied ones are read the same way (OpenSlide chooses
    the JPEG colour space from the TIFF photometric tag, not from the stream).
    """

    photometric: str = "YCBCR"  # or "RGB"
    subsampling: tuple[int, int] = (2, 2)


def pyramid_factors(shape: tuple[int, int], *, min_side: int = MIN_LEVEL_SIDE) -> list[int]:
    """Downsample factors 1, 2, 4, ... until a level fits in ``min_side`` pixels."""
    factors = [1]
    while max(-(-shape[0] // factors[-1]), -(-shape[1] // factors[-1])) > min_side:
        factors.append(factors[-1] * 2)
    return factors


def _row_blocks(compute_row: Callable[[int], np.ndarray], n_rows: int) -> Iterator[np.ndarray]:
    """Row blocks in order, each computed in a helper thread while the previous one is consumed."""
    if n_rows == 0:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tiff-row") as pool:
        future = pool.submit(compute_row, 0)
        for row in range(n_rows):
            block = future.result()
            if row + 1 < n_rows:
                future = pool.submit(compute_row, row + 1)
            yield block


@overload
def iter_tiles(
    array: Any, *, tile: int = ..., threads: int | None = ..., encode: None = ...
) -> Iterator[np.ndarray]: ...
@overload
def iter_tiles(
    array: Any, *, tile: int = ..., threads: int | None = ..., encode: Callable[[np.ndarray], bytes]
) -> Iterator[bytes]: ...
def iter_tiles(
    array: Any, *, tile: int = TILE, threads: int | None = None, encode: Callable[[np.ndarray], bytes] | None = None
) -> Iterator[np.ndarray | bytes]:
    """Tiles of a lazy (H, W[, S]) Dask array in TIFF order, computing one row of tiles at a time.

    The array's row chunks must be ``tile`` high. With ``encode``, tiles come out encoded
    (padded to full size; computed with the row, in the helper thread's pool), and tiles
    that are all zero bits or all NaN -- no data -- are encoded once and reused.
    """
    if any(c != tile for c in array.chunks[0][:-1]):
        raise ValueError(f"row chunks must be {tile} high, got {array.chunks[0][:3]}...")
    width = array.shape[1]
    rows = [array.blocks[i] for i in range(array.numblocks[0])]
    empty: dict[str, bytes] = {}
    pool = ThreadPoolExecutor(max_workers=threads or None, thread_name_prefix="tiff-encode") if encode else None

    def encoded(piece: np.ndarray) -> bytes:
        assert encode is not None  # the pool that calls this exists only with an encoder
        piece = _padded(piece, tile)
        kind = "nan" if piece.dtype.kind == "f" and np.isnan(piece).all() else "zero" if not piece.any() else ""
        if kind:
            if kind not in empty:
                empty[kind] = encode(piece)
            return empty[kind]
        return encode(piece)

    def compute_row(index: int) -> Any:
        block = np.asarray(rows[index].compute(scheduler="threads", num_workers=threads))
        if pool is None:
            return block
        return list(pool.map(encoded, [block[:, x : x + tile] for x in range(0, width, tile)]))

    try:
        for block in _row_blocks(compute_row, len(rows)):
            if pool is None:
                for x in range(0, width, tile):
                    yield block[:, x : x + tile]
            else:
                yield from block
    finally:
        if pool is not None:
            pool.shutdown()


def _padded(piece: np.ndarray, tile: int) -> np.ndarray:
    if piece.shape[:2] == (tile, tile):
        return np.ascontiguousarray(piece)
    padded = np.zeros((tile, tile, *piece.shape[2:]), dtype=piece.dtype)
    padded[: piece.shape[0], : piece.shape[1]] = piece
    return padded


def iter_source_tiles(
    source: TileSource,
    *,
    tile: int,
    encode: Callable[[np.ndarray], bytes],
    empty: bytes | None,
    threads: int | None = None,
) -> Iterator[bytes]:
    """Encoded tiles of ``source`` in TIFF order; no-data tiles are ``empty`` (encoded once by the caller).

    Tiles with data are made and encoded in a thread pool (numpy, zlib, libjpeg and
    OpenSlide release the GIL); at most a few per thread are in flight, so memory does
    not grow with the level. A kind without a no-data tile (``empty`` None: RGB JPEG)
    needs a source whose tiles all have data.
    """
    rows, cols = -(-source.shape[0] // tile), -(-source.shape[1] // tile)
    workers = threads or os.cpu_count() or 2

    def encoded(row: int, col: int) -> bytes:
        piece = source.tile(row, col)
        return piece if isinstance(piece, bytes) else encode(_padded(piece, tile))

    def plan() -> Iterator[tuple[int, int] | bytes]:
        """Each tile in TIFF order: (row, col) to make, or the shared no-data tile."""
        for row in range(rows):
            for col in range(cols):
                if source.has_data(row, col):
                    yield row, col
                elif empty is None:
                    raise ValueError(f"tile ({row}, {col}) has no data, and this TIFF kind has no no-data tile")
                else:
                    yield empty

    if workers == 1:  # in this thread: a pool of one would only add a hand-over per tile
        for item in plan():
            yield item if isinstance(item, bytes) else encoded(*item)
        return
    window: deque[Future[bytes] | bytes] = deque()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tiff-tile") as pool:
        for item in plan():
            window.append(item if isinstance(item, bytes) else pool.submit(encoded, *item))
            while len(window) > workers * TILES_IN_FLIGHT_PER_THREAD:
                head = window.popleft()
                yield head if isinstance(head, bytes) else head.result()
        while window:
            head = window.popleft()
            yield head if isinstance(head, bytes) else head.result()


def _level_codec(
    kind: str, level: Any, tile: int
) -> tuple[dict[str, Any], Callable[[np.ndarray], bytes], bytes | None]:
    """(tifffile options, encoder, shared no-data tile) of one level; we encode, tifffile only writes.

    The encoders give exactly what tifffile would (same codec and arguments), so readers
    see no difference; no-data is NaN for float32 and transparent black for RGBA.
    """
    import imagecodecs

    if kind in ("float32", "rgba"):

        def encode(piece: np.ndarray) -> bytes:
            return _deflate(piece, DEFLATE_LEVEL)

        options: dict[str, Any]
        if kind == "float32":
            options = {"photometric": "minisblack", "compression": "zlib"}
            no_data = np.full((tile, tile), np.nan, dtype=np.float32)
        else:
            options = {"photometric": "rgb", "extrasamples": ["unassalpha"], "compression": "zlib"}
            no_data = np.zeros((tile, tile, 4), dtype=np.uint8)
        return options, encode, _deflate(no_data, EMPTY_DEFLATE_LEVEL)
    if kind == "rgb_jpeg":
        layout = getattr(level, "jpeg_layout", None) or JpegLayout()
        arguments: dict[str, Any] = {
            "level": JPEG_QUALITY,
            "subsampling": layout.subsampling,
            "colorspace": "RGB",
            "outcolorspace": layout.photometric,
        }

        def encode_jpeg(piece: np.ndarray) -> bytes:
            return imagecodecs.jpeg_encode(piece, **arguments)  # type: ignore[return-value]  # bytes without `out`

        options = {
            "photometric": "rgb",
            "compression": "jpeg",
            "subsampling": layout.subsampling,
            "compressionargs": {"level": JPEG_QUALITY, "outcolorspace": layout.photometric},
        }
        return options, encode_jpeg, None
    raise ValueError(f"unknown TIFF kind {kind!r}; use float32, rgba or rgb_jpeg")


def _deflate(data: np.ndarray, level: int) -> bytes:
    import imagecodecs

    # imagecodecs' stubs take only bytes-like data and return bytes | bytearray; the codec
    # reads any buffer (an array, without a copy) and returns bytes when no ``out`` is given.
    return imagecodecs.zlib_encode(data, level)  # type: ignore[arg-type, return-value]


def ome_xml(
    *, name: str, shape: tuple[int, ...], dtype: np.dtype, mpp: float | None, description: str | None = None
) -> str:
    """ASCII OME-XML for one image stored in IFD 0 (its pyramid in SubIFDs); ``shape`` (H, W[, S]).

    No unit attributes: micrometre is OME's default, and Bio-Formats' OME-TIFF check
    rejects a non-ASCII ``\u00b5m`` in the TIFF comment.
    """
    height, width = shape[:2]
    samples = shape[2] if len(shape) > 2 else 1
    pixel_type = {"float32": "float", "uint8": "uint8"}[np.dtype(dtype).name]
    size = f' PhysicalSizeX="{float(mpp)!r}" PhysicalSizeY="{float(mpp)!r}"' if mpp else ""
    text = f"<Description>{escape(description)}</Description>" if description else ""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
        'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        'xsi:schemaLocation="http://www.openmicroscopy.org/Schemas/OME/2016-06 '
        'http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd">'
        f'<Image ID="Image:0" Name={quoteattr(name)}>{text}'
        f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="{pixel_type}" SizeX="{width}" SizeY="{height}" '
        f'SizeC="{samples}" SizeZ="1" SizeT="1"{size}>'
        f'<Channel ID="Channel:0:0" SamplesPerPixel="{samples}"/><TiffData IFD="0" PlaneCount="1"/>'
        "</Pixels></Image></OME>"
    )
    return xml.encode("ascii", "xmlcharrefreplace").decode("ascii")


class _TileSpool:
    """A reduced level's encoded tiles, kept on disk between its SubIFD copy and its top-level copy."""

    def __init__(self, folder: Path) -> None:
        self._file: BinaryIO = tempfile.TemporaryFile(dir=folder, prefix=".tiles-")  # noqa: SIM115 -- closed by close()
        self._sizes: list[int] = []

    def record(self, tiles: Iterator[bytes]) -> Iterator[bytes]:
        for data in tiles:
            self._file.write(data)
            self._sizes.append(len(data))
            yield data

    def replay(self) -> Iterator[bytes]:
        self._file.seek(0)
        for size in self._sizes:
            yield self._file.read(size)

    def close(self) -> None:
        self._file.close()


def write_pyramid_tiff(
    path: str | Path,
    levels: Sequence[Any],
    *,
    mpp: float | None,
    kind: str,
    description: str | None = None,
    tile: int = TILE,
    threads: int | None = None,
) -> Path:
    """Write pyramid ``levels`` (full size first), each a lazy 2-D or (H, W, S) Dask array or a :class:`TileSource`.

    ``kind``: ``float32`` ((H, W) scores), ``rgba`` ((H, W, 4) uint8) or ``rgb_jpeg``
    ((H, W, 3) uint8). ``mpp`` is level 0's um/px; each level's resolution tags use its
    own downsample, taken from the level widths. ``description`` (provenance) goes into
    the OME-XML. The file appears atomically; layout in the module docstring.
    """
    import tifffile

    if kind not in ("float32", "rgba", "rgb_jpeg"):
        raise ValueError(f"unknown TIFF kind {kind!r}; use float32, rgba or rgb_jpeg")
    dtype = np.dtype(np.float32 if kind == "float32" else np.uint8)
    width0 = levels[0].shape[1]
    path = Path(path)
    name = path.name.split(".")[0]

    def tiles_of(level: Any) -> Iterator[bytes]:
        _, encode, empty = _level_codec(kind, level, tile)
        if isinstance(level, TileSource):
            return iter_source_tiles(level, tile=tile, encode=encode, empty=empty, threads=threads)
        return iter_tiles(level, tile=tile, threads=threads, encode=encode)

    def write(writer: Any, level: Any, tiles: Iterator[bytes], **extra: Any) -> None:
        options, _, _ = _level_codec(kind, level, tile)
        resolution = {}
        if mpp:
            per_cm = 1e4 / (mpp * width0 / level.shape[1])
            resolution = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
        writer.write(
            tiles,
            shape=level.shape,
            dtype=dtype,
            tile=(tile, tile),
            metadata=None,
            maxworkers=threads,
            **resolution,
            **options,
            **extra,
        )

    reduced = list(levels[1:])
    with atomic_output(path) as tmp:
        stored = sum(int(np.prod(level.shape)) for level in [*levels, *reduced]) * np.dtype(dtype).itemsize
        spools = [_TileSpool(tmp.parent) for _ in reduced]
        try:
            with tifffile.TiffWriter(tmp, bigtiff=stored > 2**31) as writer:
                xml = ome_xml(name=name, shape=levels[0].shape, dtype=dtype, mpp=mpp, description=description)
                write(writer, levels[0], tiles_of(levels[0]), subfiletype=0, subifds=len(reduced), description=xml)
                for level, spool in zip(reduced, spools, strict=True):
                    write(writer, level, spool.record(tiles_of(level)), subfiletype=1)
                for level, spool in zip(reduced, spools, strict=True):
                    write(writer, level, spool.replay(), subfiletype=1)
        finally:
            for spool in spools:
                spool.close()
    logger.debug("wrote %s (%d levels)", path, len(levels))
    return path
