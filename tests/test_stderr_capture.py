"""Lines C libraries write straight to file descriptor 2 are kept per slide (manifest row and one
log line naming the slide), never printed raw; Python's own stderr still reaches the user; reading
processes (DataLoader workers) hand their library warnings to the slide.

The C-level trigger is real: OpenSlide, with ``OPENSLIDE_DEBUG=decoding`` (its documented switch
for "log warnings from format decoding libraries"), prints libtiff's warning about a TIFF directory
whose tags are out of order through GLib, straight to descriptor 2. libjpeg warnings do not reach
descriptor 2 through either reader (checked: OpenSlide turns them into read errors, imagecodecs
silences them), so no test pretends they do. OpenSlide reads ``OPENSLIDE_DEBUG`` when it loads,
hence the subprocesses."""

from __future__ import annotations

import csv
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from wsi_mil.io.library_warnings import capture_library_warnings
from wsi_mil.io.stderr_capture import FILE_PREFIX, SHARED_NOTE, STALE_S, _alive, _remove_stale_files, capture_stderr
from wsi_mil.synthetic import Region, write_synthetic_slide

ROOT = Path(__file__).resolve().parents[1]
LIBTIFF = "libtiff warning: TIFFReadDirectoryCheckOrder: Invalid TIFF directory; tags are not sorted"


def _slide(path: Path, *, unsorted_tags: bool) -> None:
    """A small Aperio-style JPEG slide; ``unsorted_tags``: its first directory has two tag entries
    swapped (libtiff warns, then reads it as usual)."""
    write_synthetic_slide(
        path, width=1024, height=768, mpp=0.5, downsamples=(1, 4), regions=(Region(256, 256, 768, 512),)
    )
    if not unsorted_tags:
        return
    with path.open("r+b") as handle:
        assert handle.read(4) == b"II*\0"
        (ifd,) = struct.unpack("<I", handle.read(4))
        handle.seek(ifd + 2)
        first_two = handle.read(24)
        handle.seek(ifd + 2)
        handle.write(first_two[12:] + first_two[:12])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "OPENSLIDE_DEBUG": "decoding",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def _tile(slides: Path, run: Path) -> list[str]:
    return ["-m", "wsi_mil", "tile", str(slides), "--out", str(run), "--patch-size", "128", "--reader", "openslide"]


def _warnings(run: Path, stage: str) -> dict[str, str]:
    with (run / "manifest.csv").open(newline="") as handle:
        return {row["slide_id"]: row["warnings"] for row in csv.DictReader(handle) if row["stage"] == stage}


def _check_stage(done: subprocess.CompletedProcess[str], run: Path, stage: str) -> None:
    lines = [line for line in done.stderr.splitlines() if "OpenSlide-WARNING" in line]
    assert {line.split(":")[0] for line in lines} == {"case1", "case3"}, done.stderr
    assert all(line.split(": ", 1)[1].startswith("library warnings: stderr: OpenSlide-WARNING **: ") for line in lines)
    rows = _warnings(run, stage)
    for slide_id, warnings in rows.items():
        bad = slide_id in ("case1", "case3")
        assert warnings.startswith(f"stderr: OpenSlide-WARNING **: {LIBTIFF}") if bad else not warnings, rows


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("openslide")
    folder = tmp_path_factory.mktemp("c-stderr")
    for index in range(4):
        _slide(folder / f"case{index}.svs", unsorted_tags=index % 2 == 1)
    return folder


@pytest.mark.parametrize(
    "where",
    [["--workers", "0"], ["--workers", "1"], ["--workers", "0", "--slide-timeout", "600"]],
    ids=["this process", "a Dask worker", "the time limit's child"],
)
def test_openslide_c_warnings_reach_the_manifest_in_tile(two_slides: Path, tmp_path: Path, where: list[str]) -> None:
    run = tmp_path / "run"
    _check_stage(_run(*_tile(two_slides, run), *where, "--quiet"), run, "tile")


@pytest.mark.slow
def test_openslide_c_warnings_reach_the_manifest_in_extract_and_heatmap(two_slides: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from tests.cli_runs import train_and_predict

    run, quiet = tmp_path / "run", ["--workers", "0", "--quiet"]
    _run(*_tile(two_slides, run), *quiet)
    extract = ["extract", str(run), "--encoder", "resnet18", "--weights", "random", "--batch-size", "16"]
    _check_stage(_run("-m", "wsi_mil", *extract, *quiet), run, "extract")
    labels = tmp_path / "labels.csv"
    labels.write_text("slide_id,label\n" + "".join(f"case{i},{'tumor' if i % 2 else 'normal'}\n" for i in range(4)))
    train_and_predict(run, labels)
    heatmap = ["heatmap", str(run), "--formats", "png", "--maps", "attention_pct", "--set", "heatmap.cam_top_k=0"]
    _check_stage(_run("-m", "wsi_mil", *heatmap, *quiet), run, "heatmap")


def test_python_stderr_still_reaches_the_user_while_descriptor_2_is_captured(two_slides: Path) -> None:
    """A logging handler on sys.stderr, a traceback and a warning printed in the window reach the real
    stderr; OpenSlide's C-level line does not, and is captured."""
    script = textwrap.dedent(
        f"""
        import json, logging, sys, traceback, warnings
        import openslide
        from wsi_mil.io.library_warnings import capture_library_warnings
        logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
        with capture_library_warnings() as captured:
            openslide.OpenSlide({str(two_slides / "case1.svs")!r}).close()
            logging.getLogger("wsi_mil.check").info("python log line")
            try:
                raise RuntimeError("python traceback")
            except RuntimeError:
                traceback.print_exc()
            warnings.warn("code warning", DeprecationWarning, stacklevel=1)
        print(json.dumps(captured))
        """
    )
    done = _run("-W", "always", "-c", script)
    assert "OpenSlide-WARNING" not in done.stderr, done.stderr
    for shown in (
        "wsi_mil.check python log line",
        "RuntimeError: python traceback",
        "DeprecationWarning: code warning",
    ):
        assert shown in done.stderr, done.stderr
    captured = json.loads(done.stdout)
    assert captured and set(captured) == {f"stderr: OpenSlide-WARNING **: {LIBTIFF} in ascending order"}, captured


def test_overlapping_captures_share_the_lines_with_a_note() -> None:
    """Descriptor 2 is the process's: a line written while two captures are open goes to both, marked."""
    with capture_stderr() as first:
        with capture_stderr() as second:
            os.write(2, b"from a C library\n")
    with capture_stderr() as alone:
        os.write(2, b"later\n")
    assert first == second == [f"stderr: from a C library{SHARED_NOTE}"]
    assert alone == ["stderr: later"]


class _OpensBadTiff:
    """A dataset whose items parse a TIFF that makes tifffile log a warning: only the worker reads it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> int:
        import tifffile

        with tifffile.TiffFile(self.path) as tif:
            tif.pages[0].tags  # noqa: B018 -- parsing the tags is what logs
        return index


def test_dataloader_worker_warnings_reach_the_slide(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A forked DataLoader worker inherited the capture's handler and recorder, whose lists nobody read:
    its warnings were lost. With the loaders' worker init they come back through descriptor 2."""
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    from tests.test_library_warnings import RAW, _flat_tiff
    from wsi_mil.features.loaders import _worker_init

    bad = _flat_tiff(tmp_path / "bad.tif", bad_tag=True)
    loader = DataLoader(_OpensBadTiff(bad), batch_size=2, num_workers=1, worker_init_fn=_worker_init)
    caplog.set_level(logging.WARNING)
    with capture_library_warnings() as captured:
        assert [batch.tolist() for batch in loader] == [[0, 1]]
    assert any(line.startswith("tifffile: ") and RAW in line for line in captured), captured
    assert not [r for r in caplog.records if r.name == "tifffile"]


def _dies_after_a_message(item: str) -> None:
    with capture_stderr():
        os.write(2, f"{item}: assertion failed in a C library\n".encode())
        os.abort()


def _hangs_after_a_message(item: str) -> None:
    with capture_stderr():
        os.write(2, f"{item}: waiting for a storage that does not answer\n".encode())
        time.sleep(600)


def test_a_child_that_dies_or_is_stopped_inside_a_capture_leaves_its_last_words(tmp_path: Path) -> None:
    """What a slide's process wrote to the captured descriptor before it crashed or was stopped at the
    time limit is not lost with it: it ends the error message, and its file is removed."""
    from wsi_mil.errors import SlideTimeoutError
    from wsi_mil.time_limit import ChildDiedError, run_with_time_limit

    before = set(Path(tempfile.gettempdir()).glob(f"{FILE_PREFIX}*"))
    with pytest.raises(ChildDiedError, match=r"last words on stderr: crash\.svs: assertion failed in a C library"):
        run_with_time_limit(_dies_after_a_message, "crash.svs", seconds=60)
    with pytest.raises(SlideTimeoutError, match=r"last words on stderr: stuck\.svs: waiting for a storage"):
        run_with_time_limit(_hangs_after_a_message, "stuck.svs", seconds=0.5)
    left = set(Path(tempfile.gettempdir()).glob(f"{FILE_PREFIX}*")) - before
    assert not [path for path in left if not _alive(int(path.name[len(FILE_PREFIX) :].split("-")[0]))], left


def test_files_of_processes_killed_inside_a_window_are_removed_once_stale(tmp_path: Path) -> None:
    """A process killed with SIGKILL inside a window (no parent reads its file) leaves the file; the next
    process that captures removes it once it is older than STALE_S, and leaves a live process's alone."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    folder = Path(tempfile.gettempdir())
    stale, fresh, live = (
        folder / f"{FILE_PREFIX}{dead.pid}-test-stale.txt",
        folder / f"{FILE_PREFIX}{dead.pid}-test-fresh.txt",
        folder / f"{FILE_PREFIX}{os.getpid()}-test-live.txt",
    )
    for path in (stale, fresh, live):
        path.write_text("last words\n")
    old = time.time() - STALE_S - 60
    os.utime(stale, (old, old))
    os.utime(live, (old, old))
    try:
        _remove_stale_files()
        assert not stale.exists() and fresh.exists() and live.exists()
    finally:
        for path in (stale, fresh, live):
            path.unlink(missing_ok=True)
