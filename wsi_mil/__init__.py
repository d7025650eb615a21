"""wsi-mil: tile whole-slide images, extract features, train attention-MIL heads,
and stitch explanation heatmaps.

Importing the package is cheap: heavy libraries are imported where they are used.
"""

from __future__ import annotations

__version__ = "0.1.0"
