"""``wsi-mil demo`` (``make demo``): tile real slides when they are here, else a generated one.

With the shared data present, the demo tiles its real slides (Aperio SVS, Hamamatsu
NDPI, a DICOM folder, a flat TIFF, an Aperio JPEG 2000 slide without MPP) listed
in a CSV that gives the MPP the two slides without metadata need. Without it, it
writes a synthetic pyramidal slide and tiles that. Either way it prints where the
bags, QC images and manifest are.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from wsi_mil.config import Config, ParallelConfig, TilingConfig
from wsi_mil.datasets import shared_data_dir
from wsi_mil.io.discover import read_slide_csv
from wsi_mil.synthetic import Region, write_synthetic_slide
from wsi_mil.tiling.tile import tile_slides

logger = logging.getLogger(__name__)

#: MPP for the shared slides that carry none. Stated assumptions, not metadata:
#: the TCGA frozen section was scanned at 20x; the kidney strip is treated as 20x.
ASSUMED_MPP = {"TCGA-CR-7395-01A-01-TS1.svs": 0.5, "kidney-ihc-strip.tif": 0.5}
SHARED_SLIDES = (
    "slides/CMU-1-Small-Region.svs",
    "slides/TCGA-CR-7395-01A-01-TS1.svs",
    "slides/test3-DAPI-2-(387).ndpi",
    "slides/kidney-ihc-strip.tif",
    "slides/small.svs",
    "dicom-boxes",
)


def _shared_slide_csv(data: Path, run_dir: Path) -> Path:
    csv_path = run_dir / "slides.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "mpp"])
        for relative in SHARED_SLIDES:
            path = data / relative
            writer.writerow([str(path), ASSUMED_MPP.get(path.name, "")])
    return csv_path


def _generated_slide(run_dir: Path) -> Path:
    regions = [Region(2048, 1536, 6144, 4096, "ellipse"), Region(9216, 2048, 3072, 5120, "rect")]
    return write_synthetic_slide(
        run_dir / "slides" / "synthetic-1.svs", width=14336, height=9216, mpp=0.25, regions=regions
    )


def run_demo(
    *, out: Path | None = None, workers: int | None = None, progress: bool = True, debug: bool = False
) -> tuple[list[dict], Path]:
    """Tile the demo slides at 0.5 and 1.0 um/px; returns the manifest records and the run dir."""
    run_dir = Path(out) if out else Path.cwd() / "wsi-mil-demo"
    run_dir.mkdir(parents=True, exist_ok=True)
    data = shared_data_dir()
    if data is not None:
        logger.info("demo: tiling the real slides in %s", data)
        sources = read_slide_csv(_shared_slide_csv(data, run_dir))
    else:
        logger.info("demo: shared data not found; tiling a generated slide")
        path = _generated_slide(run_dir)
        sources = read_slide_csv(_write_single(run_dir, path))
    config = Config(
        tiling=TilingConfig(target_mpp=(0.5, 1.0), bag_format="h5"),
        parallel=ParallelConfig(workers=workers),
    )
    records = tile_slides(sources, run_dir, config=config, progress=progress, debug=debug)
    return records, run_dir


def _write_single(run_dir: Path, slide: Path) -> Path:
    csv_path = run_dir / "slides.csv"
    csv_path.write_text(f"path\n{slide}\n")
    return csv_path


def format_report(records: list[dict], run_dir: Path) -> str:
    """A table of what was tiled and where the outputs are."""
    lines = [f"{'slide':32s} {'set':8s} {'status':8s} {'patches':>8s}  note/error"]
    for r in sorted(records, key=lambda r: (r["slide_id"], r["bag_set"])):
        detail = r.get("error") or r.get("note") or ""
        lines.append(f"{r['slide_id'][:32]:32s} {r['bag_set']:8s} {r['status']:8s} {r.get('n_patches', ''):>8}  {detail}")
    lines += [
        "",
        f"bags:     {run_dir / 'bags'}   (one folder per target resolution)",
        f"QC:       {run_dir / 'qc'}",
        f"manifest: {run_dir / 'manifest.csv'}",
    ]
    return "\n".join(lines)
