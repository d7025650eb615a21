"""CLAM and TRIDENT at the extraction stage: their coords files in, CLAM's feature layout out.

In: ``wsi-mil extract RUN --coords DIR --slides DIR`` extracts the patches of CLAM
``create_patches_fp.py`` coords files (``<slide_id>.h5``) and TRIDENT coords files
(``<slide_id>_patches.h5``), each matched to its slide by id in ``--slides``. Their
``coords`` are level-0 (x, y), like ours. CLAM files give ``patch_level`` and
``patch_size`` (read at that level), and ``level_dim`` (that level's size, checked
against the slide); TRIDENT files give ``patch_size_level0``, read here at the finest
level that is not finer than the patch asks for (the encoder resizes every patch to its
input size anyway).

Out: with ``extract.clam_files`` (``--clam-files``) every feature file also goes to
``RUN_DIR/clam/<encoder>[/<set>]/h5_files/<slide_id>.h5`` (``features`` + ``coords``;
a hard link where the file system allows) and ``pt_files/<slide_id>.pt`` (a float32
tensor (N, D)), the ``data_dir`` layout CLAM's ``main.py`` trains on.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from wsi_mil.errors import ConfigError, SlideMismatchError, WsiMilError
from wsi_mil.store.atomic import atomic_output

logger = logging.getLogger(__name__)

#: TRIDENT names its coords files ``<slide name>_patches.h5``.
TRIDENT_SUFFIX = "_patches"


def coords_slide_id(path: Path) -> str:
    """The slide id of a CLAM (``<id>.h5``) or TRIDENT (``<id>_patches.h5``) coords file."""
    return path.stem.removesuffix(TRIDENT_SUFFIX) if path.stem != TRIDENT_SUFFIX else path.stem


def find_coords_files(folder: str | Path) -> list[Path]:
    """Coords files in ``folder`` or its ``patches/`` sub-folder (where both tools write them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder of coords files (--coords)")
    if (folder / "patches").is_dir():
        folder = folder / "patches"
    files = sorted(p for p in folder.glob("*.h5") if not p.name.startswith("."))
    if not files:
        raise ConfigError(
            f"{folder}: no .h5 coords files (CLAM create_patches_fp: <slide_id>.h5; TRIDENT: <slide_id>_patches.h5)"
        )
    return files


def find_coords_jobs(
    run_dir: str | Path, coords: str | Path, slides: str | Path, *, encoder: str, feature_format: str, extensions: Any
) -> list[Any]:
    """One extraction job per coords file, its slide found by id in ``slides`` (a folder, file or CSV)."""
    from wsi_mil.features.jobs import ExtractionJob
    from wsi_mil.io.discover import find_slides
    from wsi_mil.io.slide_ids import check_slide_id

    by_id = {source.slide_id: source.path for source in find_slides([slides], extensions=extensions)}
    from wsi_mil.run_layout import RunLayout

    layout = RunLayout(run_dir)
    jobs: list[ExtractionJob] = []
    ids: dict[str, Path] = {}
    for path in find_coords_files(coords):
        slide_id = check_slide_id(coords_slide_id(path), where=path)
        if slide_id in ids:
            raise ConfigError(f"{path} and {ids[slide_id]} are coords files of one slide id {slide_id!r}")
        ids[slide_id] = path
        jobs.append(
            ExtractionJob(
                slide_id,
                "-",
                path,
                layout.features_dir(encoder) / f"{slide_id}.{feature_format}",
                slide_path=by_id.get(slide_id),
                foreign=True,
                clam_dir=layout.clam_dir(encoder),
            )
        )
    unmatched = [job.slide_id for job in jobs if job.slide_path is None]
    if len(unmatched) == len(jobs):
        raise ConfigError(
            f"{slides}: no slide matches a coords file of {coords} (ids such as "
            f"{', '.join(unmatched[:3])}; a slide's id is its file name without the extension)"
        )
    return jobs


def open_foreign(
    bag: Any, slide_path: Path | None, *, slide_id: str, reader: str, mpp: float | None
) -> tuple[Any, Any]:
    """(the bag with our reading attributes, the open slide) for a CLAM or TRIDENT coords file."""
    from wsi_mil.io.open import open_slide

    if slide_path is None:
        raise SlideMismatchError(
            f"{bag.path}: no slide with the id {slide_id!r} in --slides; add it, or remove the coords file"
        )
    attrs = dict(bag.attrs)
    if "patch_size" not in attrs:
        raise WsiMilError(f"{bag.path}: its coords have no patch_size attribute; not a CLAM or TRIDENT coords file")
    slide = open_slide(slide_path, reader=reader, mpp=mpp)
    try:
        if "patch_level" in attrs:  # CLAM: patch_size pixels at patch_level, level_dim is that level's size
            level = int(attrs["patch_level"])
            if level >= len(slide.level_dimensions):
                raise SlideMismatchError(
                    f"{bag.path}: patch_level {level}, but {slide_path} has "
                    f"{len(slide.level_dimensions)} level(s); is it the slide the file was made from?"
                )
            expected = attrs.get("level_dim")
            if expected is not None and tuple(int(v) for v in expected) != tuple(slide.level_dimensions[level]):
                raise SlideMismatchError(
                    f"{bag.path}: made from a slide whose level {level} is {expected[0]}x{expected[1]}, but "
                    f"{slide_path} has {tuple(slide.level_dimensions[level])} there; give the slide it was made from"
                )
            size0 = round(int(attrs["patch_size"]) * float(slide.level_downsamples[level]))
        else:  # TRIDENT: patch_size_level0 level-0 pixels, resized to patch_size
            if "patch_size_level0" not in attrs:
                raise WsiMilError(
                    f"{bag.path}: neither patch_level nor patch_size_level0; cannot tell the patch's extent"
                )
            size0 = int(attrs["patch_size_level0"])
            wanted = size0 / int(attrs["patch_size"])
            level = max(
                (i for i, d in enumerate(slide.level_downsamples) if d <= wanted + 1e-6),
                default=0,
                key=lambda i: slide.level_downsamples[i],
            )
        read = round(size0 / float(slide.level_downsamples[level]))
    except BaseException:
        slide.close()
        raise
    attrs.update(
        {
            "patch_level": level,
            "patch_size": read,
            "patch_size_level0": size0,
            "slide_path": str(slide_path),
            "slide_id": slide_id,
            "slide_mpp": slide.mpp,
            "level_dim": list(slide.dimensions),
        }
    )
    return dataclasses.replace(bag, attrs=attrs), slide


def write_clam_files(feature_path: Path, folder: Path) -> None:
    """``folder/h5_files/<id>.h5`` (the feature file, hard-linked or copied) and ``folder/pt_files/<id>.pt``."""
    import numpy as np
    import torch

    from wsi_mil.store.features import read_features

    if feature_path.suffix != ".h5":
        raise ConfigError(f"{feature_path}: CLAM's files need extract.feature_format: h5")
    slide_id = feature_path.stem
    h5 = folder / "h5_files" / f"{slide_id}.h5"
    with atomic_output(h5) as tmp:
        try:
            os.link(feature_path, tmp)
        except OSError:
            shutil.copyfile(feature_path, tmp)
    features = read_features(feature_path).features
    with atomic_output(folder / "pt_files" / f"{slide_id}.pt") as tmp:
        torch.save(torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)), tmp)


def clam_files_missing(feature_path: Path, folder: Path) -> bool:
    slide_id = feature_path.stem
    return not ((folder / "h5_files" / f"{slide_id}.h5").exists() and (folder / "pt_files" / f"{slide_id}.pt").exists())
