"""The unit of work of the extraction stage, shared by its job finders (run bags, CLAM/TRIDENT coords files)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ExtractionJob:
    """One bag to turn into one feature file."""

    slide_id: str
    bag_set: str
    bag_path: Path
    out_path: Path
    #: A CLAM or TRIDENT coords file (interop.py); its slide, None when --slides lacks it.
    foreign: bool = False
    slide_path: Path | None = None
    #: CLAM's data_dir for this feature file (``RUN_DIR/clam/<encoder>[/<set>]``), with ``extract.clam_files``
    clam_dir: Path | None = None
