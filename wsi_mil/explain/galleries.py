"""Top-k / bottom-k patch galleries: the patches a map ranks highest and lowest, side by side.

One PNG per map: the first row holds the ``k`` highest-scoring patches (best first), the
second the ``k`` lowest, each captioned with its score and level-0 position, so a
reader sees at once what the model calls lesion and what it calls background.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from wsi_mil.store.atomic import atomic_output

if TYPE_CHECKING:
    from wsi_mil.explain.maps import SlideScores

THUMB = 160
CAPTION = 28


def ranked_rows(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``k`` highest (best first) and ``k`` lowest (lowest first) finite values."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.flatnonzero(np.isfinite(values))
    order = finite[np.argsort(-values[finite], kind="stable")]
    k = min(k, len(order) // 2) if len(order) > 1 else len(order)
    return order[:k], order[::-1][:k]


def write_gallery(
    path: str | Path,
    name: str,
    top: np.ndarray,
    bottom: np.ndarray,
    top_values: np.ndarray,
    bottom_values: np.ndarray,
    top_coords: np.ndarray,
    bottom_coords: np.ndarray,
) -> Path:
    """images: (k, H, W, 3) uint8 each; values and coords per image."""
    k = max(len(top), len(bottom), 1)
    label = 90
    sheet = Image.new("RGB", (label + k * THUMB, 2 * (THUMB + CAPTION) + 20), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((4, 4), name, fill=(0, 0, 0))
    for row, (title, images, values, coords) in enumerate(
        (("highest", top, top_values, top_coords), ("lowest", bottom, bottom_values, bottom_coords))
    ):
        y = 20 + row * (THUMB + CAPTION)
        draw.text((4, y + THUMB // 2), title, fill=(0, 0, 0))
        for column, (image, value, (cx, cy)) in enumerate(zip(images, values, coords, strict=True)):
            x = label + column * THUMB
            sheet.paste(Image.fromarray(image).resize((THUMB - 4, THUMB - 4), Image.Resampling.LANCZOS), (x + 2, y))
            draw.text((x + 2, y + THUMB - 2), f"{value:.3g}", fill=(0, 0, 0))
            draw.text((x + 2, y + THUMB + 10), f"({cx}, {cy})", fill=(90, 90, 90))
    with atomic_output(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)


def gallery_name(map_name: str) -> str:
    return f"{map_name}_gallery.png"


def write_map_galleries(
    scores: SlideScores,
    maps: dict[str, np.ndarray],
    *,
    bag_path: Path,
    out_dir: Path,
    k: int,
    reader: str = "auto",
    overwrite: bool = False,
) -> int:
    """A gallery per map (skipping complete ones); patch pixels are read once for all maps."""
    from wsi_mil.explain.patch_pixels import read_patch_pixels

    todo = {name: values for name, values in maps.items() if overwrite or not (out_dir / gallery_name(name)).exists()}
    if not todo or k <= 0:
        return 0
    picks = {name: ranked_rows(values, k) for name, values in todo.items()}
    needed = np.unique(np.concatenate([np.concatenate(p) for p in picks.values()]).astype(np.int64))
    pixels = dict(zip(needed.tolist(), read_patch_pixels(bag_path, scores.coords[needed], reader=reader), strict=True))
    for name, (top, bottom) in picks.items():
        values = np.asarray(todo[name], dtype=np.float64)
        write_gallery(
            out_dir / gallery_name(name),
            name,
            np.stack([pixels[i] for i in top.tolist()]),
            np.stack([pixels[i] for i in bottom.tolist()]),
            values[top],
            values[bottom],
            scores.coords[top],
            scores.coords[bottom],
        )
    return len(todo)
