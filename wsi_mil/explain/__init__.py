"""Explanations: per-patch score maps stitched into viewer-ready slide heatmaps.

``stitch`` paints scores on lazy Dask canvases; ``export_*`` write OME-Zarr, pyramidal
TIFF, PNG overlays and GeoJSON; ``heatmap`` is the stage (``wsi-mil heatmap``).
Submodules are imported where used, so ``import wsi_mil`` stays cheap.
"""
