"""The viewer's answers, independent of the web framework: JSON-able dicts and encoded images.

Every lookup goes through the run's :class:`RunCatalog` by slide id, head and map name;
unknown names raise KeyError (the web layer answers 404). No method takes a file path
from a request.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_mil.errors import WsiMilError
from wsi_mil.explain.stitch import ScoreRange, TissueMask, colormap_lut
from wsi_mil.view.catalog import RunCatalog
from wsi_mil.view.scales import Scale, ScaleError, cmap_for, fixed_range, is_signed, percentile_range
from wsi_mil.view.tiles import LRU, TILE, TILE_CACHE, Grid, SlideTiles, colour_tile, map_tiles, outline_tile

logger = logging.getLogger(__name__)


class ViewerService:
    def __init__(self, catalog: RunCatalog) -> None:
        self.catalog = catalog
        self.tiles = LRU(TILE_CACHE)
        self.objects = LRU(256)  # slides, map tile sources, masks, luts
        self.ranges = LRU(16384)  # colour ranges: small, and a cohort's costs a read of every scores file
        self.warm_up()

    def warm_up(self) -> None:
        """Import and compute, before the first request, what every page needs (matplotlib alone takes 0.5 s)."""
        import openslide.deepzoom  # noqa: F401

        import wsi_mil.explain.maps
        import wsi_mil.io.open  # noqa: F401

        for cmap in (cmap_for("map"), cmap_for("logit_map")):
            self._lut(cmap)

    # ------------------------------------------------------------------ slides and scores

    def slide_list(self) -> dict[str, Any]:
        rows = [entry.row() for entry in sorted(self.catalog.slides.values(), key=lambda e: e.slide_id)]
        return {"run": self.catalog.run_dir.name, "heads": self.catalog.heads(), "slides": rows}

    def _slide_or_reason(self, slide_id: str) -> SlideTiles | str:
        """The slide's tiles, or why there are none (missing or unreadable file); remembered either way."""
        entry = self.catalog.slide(slide_id)

        def open_tiles() -> SlideTiles | str:
            if entry.slide_path is None or not entry.slide_path.exists():
                return f"slide file not found ({entry.slide_path or 'no slide_path in the scores file'})"
            try:
                return SlideTiles(entry.slide_path)
            except WsiMilError as error:
                logger.warning("%s: showing the maps without the slide: %s", slide_id, error)
                return str(error)

        return self.objects.get(("slide", slide_id), open_tiles)

    def _slide_tiles(self, slide_id: str) -> SlideTiles:
        tiles = self._slide_or_reason(slide_id)
        if isinstance(tiles, str):
            raise KeyError(f"{slide_id}: {tiles}")
        return tiles

    def grid(self, slide_id: str) -> Grid:
        entry = self.catalog.slide(slide_id)
        tiles = self._slide_or_reason(slide_id)
        if not isinstance(tiles, str):
            return tiles.grid
        head = next(iter(entry.heads))
        geometry = self.catalog.geometry[(slide_id, head)]
        if geometry.get("level_dim") is not None:
            width, height = geometry["level_dim"]
            return Grid((int(width), int(height)))
        scores = self.catalog.scores(slide_id, head)
        size = scores.patch_size_level0
        return Grid((int(scores.coords[:, 0].max() + size), int(scores.coords[:, 1].max() + size)))

    def slide_info(self, slide_id: str) -> dict[str, Any]:
        entry = self.catalog.slide(slide_id)
        grid = self.grid(slide_id)
        heads = {}
        for head in entry.heads:
            scores = self.catalog.scores(slide_id, head)
            maps = {
                name: {
                    "cmap": cmap_for(name),
                    "signed": is_signed(name),
                    "slide": self.scale(slide_id, head, name, "slide").json(),
                    "cohort": self.scale(slide_id, head, name, "cohort").json(),
                }
                for name in self.catalog.maps(slide_id, head)
            }
            heads[head] = {
                "maps": maps,
                "patch_size_level0": scores.patch_size_level0,
                "cams": (slide_id, head) in self.catalog.cams,
            }
        tiles = self._slide_or_reason(slide_id)
        image = (
            {"has_image": False, "image_error": tiles, "mpp": None}
            if isinstance(tiles, str)
            else {"has_image": True, "image_error": "", "mpp": tiles.reader.mpp}
        )
        return {
            **entry.row(),
            **image,
            "width": grid.dimensions[0],
            "height": grid.dimensions[1],
            "max_level": grid.max_level,
            "tile_size": TILE,
            "heads": heads,
            "files": self.files(slide_id),
            "summary": entry.row()["heads"],
        }

    def files(self, slide_id: str) -> list[str]:
        """The run's outputs for this slide (heatmaps, galleries), relative to the run directory."""
        root = self.catalog.layout.heatmaps_root
        found = (
            [p for p in root.glob(f"**/{slide_id}/*") if p.is_file() and not p.name.startswith(".")]
            if root.is_dir()
            else []
        )
        return sorted(p.relative_to(self.catalog.run_dir).as_posix() for p in found)

    # ------------------------------------------------------------------ colour

    def scale(
        self, slide_id: str, head: str, name: str, mode: str, vmin: str | None = None, vmax: str | None = None
    ) -> Scale:
        cmap = cmap_for(name)
        if mode == "fixed":
            return Scale(mode, fixed_range(vmin, vmax), cmap)
        if mode not in ("slide", "cohort"):
            raise ScaleError(f"unknown scale {mode!r}; use slide, cohort or fixed")
        values = self.catalog.map_values(slide_id, head, name)  # KeyError for an unknown map

        if mode == "slide":
            score_range = self.ranges.get(
                (slide_id, head, name), lambda: percentile_range(values, signed=is_signed(name))
            )
        else:
            score_range = self.cohort_ranges(head)[name]
        return Scale(mode, score_range, cmap)

    def cohort_ranges(self, head: str) -> dict[str, ScoreRange]:
        """Every map's cohort range for one head, from one pass over the run's scores files (then kept)."""

        def compute() -> dict[str, ScoreRange]:
            pooled = self.catalog.cohort_values(head)
            return {name: percentile_range(values, signed=is_signed(name)) for name, values in pooled.items()}

        return self.ranges.get(("", head), compute)

    def _lut(self, cmap: str) -> np.ndarray:
        return self.objects.get(("lut", cmap), lambda: colormap_lut(cmap))

    def legend(self, cmap: str) -> bytes:
        if cmap not in (cmap_for("x"), cmap_for("logit_x")):
            raise KeyError(cmap)
        strip = np.repeat(self._lut(cmap)[None], 12, axis=0)
        buffer = io.BytesIO()
        Image.fromarray(strip, mode="RGB").save(buffer, format="PNG")
        return buffer.getvalue()

    # ------------------------------------------------------------------ tiles

    def slide_tile(self, slide_id: str, level: int, col: int, row: int) -> bytes:
        tiles = self._slide_tiles(slide_id)
        return self.tiles.get(("slide", slide_id, level, col, row), lambda: tiles.jpeg(level, col, row))

    def _tissue(self, slide_id: str) -> TissueMask | None:
        def load() -> TissueMask | None:
            bag_path = self.catalog.slide(slide_id).bag_path
            if bag_path is None:
                return None
            from wsi_mil.store.bags import read_bag

            bag = read_bag(bag_path)
            downsample = bag.mask_attrs.get("downsample")
            return (
                TissueMask(bag.tissue_mask, float(downsample)) if bag.tissue_mask is not None and downsample else None
            )

        return self.objects.get(("tissue", slide_id), load)

    def _map_tiles(self, slide_id: str, head: str, name: str) -> Any:
        def make() -> Any:
            scores = self.catalog.scores(slide_id, head)
            return map_tiles(
                scores.coords,
                self.catalog.map_values(slide_id, head, name),
                patch_size_level0=scores.patch_size_level0,
                grid=self.grid(slide_id),
                tissue=self._tissue(slide_id),
            )

        return self.objects.get(("maptiles", slide_id, head, name), make)

    def overlay_tile(
        self, slide_id: str, head: str, name: str, level: int, col: int, row: int, *, scale: Scale
    ) -> bytes:
        key = ("overlay", slide_id, head, name, level, col, row, scale.cmap, scale.score_range)

        def render() -> bytes:
            scores = self._map_tiles(slide_id, head, name).tile(level, col, row)
            return colour_tile(scores, self._lut(scale.cmap), scale.score_range)

        return self.tiles.get(key, render)

    def annotation_tile(self, slide_id: str, level: int, col: int, row: int) -> bytes:
        annotation = self.catalog.slide(slide_id).annotation
        if annotation is None:
            raise KeyError(f"{slide_id}: no annotation")
        grid = self.grid(slide_id)

        def load() -> Any:
            from wsi_mil.explain.annotations import load_ground_truth

            return load_ground_truth(annotation, grid.dimensions)

        truth = self.objects.get(("truth", slide_id), load)
        return self.tiles.get(
            ("annotation", slide_id, level, col, row),
            lambda: outline_tile(truth.grades > 0, truth.downsample, grid, level, col, row),
        )

    # ------------------------------------------------------------------ patches

    def patch_at(self, slide_id: str, head: str, x: float, y: float) -> int | None:
        """The scores row of the patch under level-0 (x, y): the one whose centre is nearest; None off patches."""
        scores = self.catalog.scores(slide_id, head)
        size = scores.patch_size_level0
        coords = scores.coords
        inside = np.flatnonzero(
            (coords[:, 0] <= x) & (x < coords[:, 0] + size) & (coords[:, 1] <= y) & (y < coords[:, 1] + size)
        )
        if not len(inside):
            return None
        centres = coords[inside] + size / 2
        return int(inside[np.argmin(((centres - (x, y)) ** 2).sum(axis=1))])

    def patch_info(self, slide_id: str, x: float, y: float) -> dict[str, Any]:
        """Every head's values at the patch under (x, y): maps, instance logits and contributions per class, CAMs."""
        entry = self.catalog.slide(slide_id)
        out: dict[str, Any] = {"slide_id": slide_id, "x": x, "y": y, "heads": {}}
        for head in entry.heads:
            row = self.patch_at(slide_id, head, x, y)
            if row is None:
                continue
            scores = self.catalog.scores(slide_id, head)
            classes = scores.classes
            values: dict[str, Any] = {name: float(v[row]) for name, v in self.catalog.maps(slide_id, head).items()}
            for key in ("instance_logits", "contribution"):
                if key in scores.arrays:
                    values[key] = dict(
                        zip(classes, (float(v) for v in np.ravel(scores.arrays[key][row])), strict=False)
                    )
            cx, cy = (int(v) for v in scores.coords[row])
            out["heads"][head] = {
                "row": row,
                "x": cx,
                "y": cy,
                "size": scores.patch_size_level0,
                "values": values,
                "cams": self._cam_methods(slide_id, head, row),
            }
        return out

    def _cams(self, slide_id: str, head: str) -> Any:
        from wsi_mil.explain.cams_file import read_cams

        return self.objects.get(("cams", slide_id, head), lambda: read_cams(self.catalog.cams[(slide_id, head)]))

    def _cam_methods(self, slide_id: str, head: str, row: int) -> list[str]:
        if (slide_id, head) not in self.catalog.cams:
            return []
        cams = self._cams(slide_id, head)
        return list(cams.maps) if row in set(np.asarray(cams.rows).tolist()) else []

    def cam_image(self, slide_id: str, head: str, method: str, row: int) -> bytes:
        """The patch with its CAM blended over it (jet, 45 %), PNG."""
        cams = self._cams(slide_id, head)
        where = np.flatnonzero(np.asarray(cams.rows) == row)
        if method not in cams.maps or not len(where):
            raise KeyError(f"{method} CAM of row {row}")
        from wsi_mil.explain.cam_gallery import cam_range

        i = int(where[0])
        low, high = cam_range(cams.maps[method])
        heat = colour_tile(np.asarray(cams.maps[method][i], np.float32), self._lut("jet"), ScoreRange(low, high))
        base = Image.fromarray(cams.images[i]).convert("RGBA")
        top = Image.open(io.BytesIO(heat)).resize(base.size)
        blended = Image.blend(base, top, 0.45).convert("RGB")
        buffer = io.BytesIO()
        blended.save(buffer, format="PNG")
        return buffer.getvalue()

    def top_patches(self, slide_id: str, head: str, name: str, k: int) -> list[dict[str, Any]]:
        """The ``k`` patches with the highest values of one map, best first."""
        from wsi_mil.explain.galleries import ranked_rows

        values = self.catalog.map_values(slide_id, head, name)
        top, _ = ranked_rows(values, max(1, min(int(k), 200)))
        coords = self.catalog.scores(slide_id, head).coords
        return [{"row": int(r), "x": int(coords[r, 0]), "y": int(coords[r, 1]), "value": float(values[r])} for r in top]

    def patch_image(self, slide_id: str, head: str, row: int) -> bytes:
        scores = self.catalog.scores(slide_id, head)
        if not 0 <= row < len(scores.coords):
            raise KeyError(f"row {row}")
        x, y = (int(v) for v in scores.coords[row])
        image = self._slide_tiles(slide_id).region(x, y, int(round(scores.patch_size_level0)))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    def run_file(self, relative: str) -> Path:
        """A file inside the run directory; KeyError for anything else (traversal, absolute paths, links out)."""
        run_dir = self.catalog.run_dir
        parts = Path(relative).parts
        if not relative or Path(relative).is_absolute() or ".." in parts or any(p.startswith(".") for p in parts):
            raise KeyError(relative)
        path = (run_dir / relative).resolve()
        if not path.is_relative_to(run_dir) or not path.is_file():
            raise KeyError(relative)
        return path

    def close(self) -> None:
        for key, value in list(self.objects.items.items()):
            if key[0] == "slide" and not isinstance(value, str):
                value.close()
