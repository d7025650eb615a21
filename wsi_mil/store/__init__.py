"""HDF5 and Zarr stores for patch bags, written atomically."""

from __future__ import annotations

from wsi_mil.store.atomic import atomic_output
from wsi_mil.store.bags import (
    BAG_FORMAT_VERSION,
    BAG_FORMATS,
    Bag,
    bag_path,
    open_bag_writer,
    read_bag,
)

__all__ = [
    "BAG_FORMATS",
    "BAG_FORMAT_VERSION",
    "Bag",
    "atomic_output",
    "bag_path",
    "open_bag_writer",
    "read_bag",
]
