"""``wsi-mil view``: a local web viewer of a run's slides, maps, annotations and top patches."""

from __future__ import annotations

from wsi_mil.view.app import create_app, running, serve
from wsi_mil.view.catalog import RunCatalog

__all__ = ["RunCatalog", "create_app", "running", "serve"]
