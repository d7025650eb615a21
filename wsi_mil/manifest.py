"""``RUN_DIR/manifest.csv``: one row per slide, stage and output set, rewritten atomically.

Only the driver process writes it (workers return records), so concurrent tasks
never race on the file.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wsi_mil.errors import WsiMilError
from wsi_mil.run_layout import RunLayout
from wsi_mil.store.atomic import atomic_output

#: Leading columns, in order; stage-specific columns follow in first-seen order.
BASE_COLUMNS = (
    "stage",
    "slide_id",
    "bag_set",
    "path",
    "reader",
    "mpp",
    "mpp_source",
    "level",
    "patch_size",
    "n_patches",
    "seconds",
    "status",
    "error",
    "note",
)
KEY = ("stage", "slide_id", "bag_set")


class Manifest:
    def __init__(self, run_dir: str | Path) -> None:
        self.path = RunLayout(run_dir).manifest
        self.rows: dict[tuple[str, ...], dict[str, Any]] = {}
        self.columns: list[str] = list(BASE_COLUMNS)
        if self.path.exists():
            with self.path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                for column in reader.fieldnames or []:
                    if column not in self.columns:
                        self.columns.append(column)
                for row in reader:
                    self.rows[self._key(row)] = row

    @staticmethod
    def _key(row: dict[str, Any]) -> tuple[str, ...]:
        return tuple(str(row.get(k) or "") for k in KEY)

    def update(self, records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store ``records`` (replacing their keys' rows); returns them as stored.

        A ``skipped`` record of an output that an earlier row made (``done``, or already a
        resumed ``skipped``) keeps that row's counts and seconds: a resumed run does not
        erase what it resumed. Its own non-empty fields (status, note) win.
        """
        stored = []
        for record in records:
            key = self._key(record)
            previous = self.rows.get(key)
            if record.get("status") == "skipped" and previous and previous.get("status") in ("done", "skipped"):
                record = {**previous, **{k: v for k, v in record.items() if v not in (None, "")}, "error": ""}
            for column in record:
                if column not in self.columns:
                    self.columns.append(column)
            self.rows[key] = dict(record)
            stored.append(self.rows[key])
        return stored

    def save(self) -> Path:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.columns, extrasaction="ignore")
        writer.writeheader()
        for key in sorted(self.rows):
            writer.writerow({c: _cell(self.rows[key].get(c)) for c in self.columns})
        with atomic_output(self.path) as tmp:
            tmp.write_text(buffer.getvalue())
        return self.path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def failure_record(record: dict[str, Any], error: BaseException, *, path: Any, started: float) -> dict[str, Any]:
    """``record`` as a failed row: our errors as they are (they name the file and what to do),
    any other exception prefixed with the file it came from; seconds since ``started``."""
    message = str(error) if isinstance(error, WsiMilError) else f"{path}: {type(error).__name__}: {error}"
    return {
        **record,
        "status": "failed",
        "error": message.replace("\n", " "),
        "seconds": round(time.perf_counter() - started, 3),
    }


class RunRecorder:
    """Collects a bulk stage's records as its tasks finish: logs failures, keeps the
    records and rewrites the manifest after each slide (so a killed run keeps its rows)."""

    def __init__(self, run_dir: str | Path, *, logger: Any) -> None:
        self.manifest = Manifest(run_dir)
        self.records: list[dict[str, Any]] = []
        self.logger = logger

    def add(self, records: Iterable[dict[str, Any]]) -> None:
        records = list(records)
        for record in records:
            if record["status"] == "failed":
                self.logger.error("%s: %s", record.get("slide_id"), record.get("error"))
        self.records.extend(self.manifest.update(records))
        self.manifest.save()

    def crashed(self, base: dict[str, Any], error: BaseException, hint: str = "") -> None:
        """Record a task whose worker process died; ``base`` holds the record's key columns."""
        message = f"worker died ({type(error).__name__}: {error})" + (f"; {hint}" if hint else "")
        self.add([{**base, "status": "failed", "error": message}])
