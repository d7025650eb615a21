"""Where the shared real test data lives (slides, bad files, tiles).

``WSI_MIL_DATA`` wins; otherwise ``../shared/data`` beside the repository root
(found from this file, never from the working directory).
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "WSI_MIL_DATA"


def shared_data_dir() -> Path | None:
    """The shared data folder, or None when it is not on this machine."""
    override = os.environ.get(ENV_VAR)
    candidates = [Path(override)] if override else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for candidate in candidates:
        if (candidate / "slides").is_dir():
            return candidate
    return None
