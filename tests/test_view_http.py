"""``wsi-mil view`` over HTTP: what it lists, the tiles it paints, its colour scales, and what it refuses.

Traversal is tried with raw HTTP request lines (a socket, no client that would normalise
the path): ``..`` plain and percent-encoded, absolute paths, a symlink out of the run, and
a foreign Host header.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from tests.view_run import LESION, TISSUE, build_run, viewer_slides
from wsi_mil.cli import build_parser, main
from wsi_mil.view import running
from wsi_mil.view.tiles import Grid

SECRET = "top-secret-outside-the-run"


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory, make_slide: Callable[..., Path]) -> Iterator[tuple[str, Path]]:
    root = tmp_path_factory.mktemp("view_http")
    run = build_run(root / "run", viewer_slides(make_slide), masks=root / "masks")
    (root / "secret.txt").write_text(SECRET)
    (root / "run-secret").mkdir()
    (root / "run-secret" / "x.txt").write_text(SECRET)
    (run / "heatmaps").mkdir(exist_ok=True)
    (run / "heatmaps" / "escape").symlink_to(root)
    with running(run, masks=root / "masks") as url:
        yield url, run


def raw_get(url: str, target: str, *, host: str | None = None, method: str = "GET") -> tuple[int, bytes]:
    """Send one request line exactly as written; return the status and body."""
    address, port = url.removeprefix("http://").split(":")
    with socket.create_connection((address, int(port)), timeout=10) as connection:
        request = f"{method} {target} HTTP/1.1\r\nHost: {host or address}\r\nConnection: close\r\n\r\n"
        connection.sendall(request.encode("latin-1"))
        data = b""
        while chunk := connection.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def get_json(url: str, target: str) -> object:
    import json

    status, body = raw_get(url, target)
    assert status == 200, (target, status, body[:200])
    return json.loads(body)


def tile_rgba(url: str, target: str) -> np.ndarray:
    status, body = raw_get(url, target)
    assert status == 200, (target, status, body[:200])
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))


def test_slide_list_has_labels_probabilities_folds_and_status(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    data = get_json(url, "/api/slides")
    rows = {row["slide_id"]: row for row in data["slides"]}
    assert set(rows) == {"lesion", "normal", "broken"}
    assert rows["lesion"]["label"] == "tumor" and rows["normal"]["label"] == "normal"
    head = rows["lesion"]["heads"]["abmil"]
    assert head["classes"] == ["normal", "tumor"] and head["probs"][1] == pytest.approx(0.98)
    assert head["folds"] == [0] and head["fold_policy"] == "out_of_fold"
    assert rows["broken"]["status"] == "failed" and "not a readable slide" in rows["broken"]["errors"][0]
    assert rows["lesion"]["has_annotation"] and not rows["normal"]["has_annotation"]
    assert data["heads"] == ["abmil", "ilam"] and rows["lesion"]["heads"]["ilam"]["probs"][1] == pytest.approx(0.9)
    info = get_json(url, "/api/slides/lesion/info")["heads"]
    assert "manifold" in info["abmil"]["maps"] and "manifold" not in info["ilam"]["maps"]
    assert (
        info["ilam"]["maps"]["attention_raw"]["slide"]["vmax"] < info["abmil"]["maps"]["attention_raw"]["slide"]["vmax"]
    )


def test_overlay_tile_is_hot_on_the_lesion_and_transparent_off_tissue(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    grid = Grid((4096, 3072))
    level = grid.max_level - 4  # downsample 16: the whole slide in 256 x 192 px, one tile
    rgba = tile_rgba(url, f"/tiles/lesion/map/abmil/logit_tumor/{level}/0_0.png?scale=slide")
    assert rgba.shape == (192, 256, 4)
    x, y, w, h = LESION
    lesion = rgba[(y + h // 2) // 16, (x + w // 2) // 16]
    tx, ty, tw, th = TISSUE
    normal = rgba[(ty + th - 100) // 16, (tx + tw - 100) // 16]
    assert lesion[3] == 255 and lesion[0] > lesion[2] + 60  # red: evidence for tumour
    assert normal[3] == 255 and normal[2] > normal[0] + 30  # blue: against
    assert rgba[5, 5, 3] == 0 and rgba[(ty + th + 200) // 16, 5, 3] == 0  # glass: transparent


def test_whole_slide_and_level_0_tiles(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    grid = Grid((4096, 3072))
    coarsest = tile_rgba(url, "/tiles/lesion/map/abmil/attention_pct/0/0_0.png")
    assert coarsest.shape[:2] == (1, 1) and coarsest[0, 0, 3] == 255  # every patch lands in the 1-px slide
    x, y, _, _ = LESION
    level0 = tile_rgba(url, f"/tiles/lesion/map/abmil/logit_tumor/{grid.max_level}/{x // 256}_{y // 256}.png")
    assert level0.shape == (256, 256, 4) and (level0[32:, 32:, 3] == 255).all()  # (the tissue mask trims the edge)
    status, _ = raw_get(url, f"/tiles/lesion/image/{grid.max_level}/{4096 // 256}_0.jpeg")
    assert status == 404  # one column past the slide


def test_annotation_outline_follows_the_lesion(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    level = Grid((4096, 3072)).max_level - 4  # downsample 16
    rgba = tile_rgba(url, f"/tiles/lesion/annotation/{level}/0_0.png")
    x, y, w, h = (v // 16 for v in LESION)
    drawn = rgba[..., 3] > 0
    assert drawn[y + h // 2, x - 1 : x + 1].any() and drawn[y + h // 2, x + w - 1 : x + w + 1].any()  # left, right
    assert drawn[y - 1 : y + 1, x + w // 2].any() and drawn[y + h - 1 : y + h + 1, x + w // 2].any()  # top, bottom
    assert not drawn[y + 3 : y + h - 3, x + 3 : x + w - 3].any()  # an outline, not a fill
    assert drawn.sum() < 4 * 2 * (w + h) + 16 and (rgba[drawn][:, 1] > 200).all()  # green, nothing else
    assert raw_get(url, f"/tiles/normal/annotation/{level}/0_0.png")[0] == 404  # no annotation


def test_scales_slide_cohort_fixed(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    info = get_json(url, "/api/slides/normal/info")["heads"]["abmil"]["maps"]
    raw = info["attention_raw"]
    assert raw["slide"]["vmax"] < 1.5 < raw["cohort"]["vmax"]  # the lesion slide's 6.0 sets the cohort's top
    logit = info["logit_tumor"]
    assert logit["cmap"] == "RdBu_r" and logit["slide"]["vmin"] == -logit["slide"]["vmax"]
    tx, ty, tw, th = TISSUE
    level = Grid((4096, 3072)).max_level - 4
    tiles = {
        mode: tile_rgba(url, f"/tiles/normal/map/abmil/attention_raw/{level}/0_0.png?{query}")
        for mode, query in (
            ("slide", "scale=slide"),
            ("cohort", "scale=cohort"),
            ("fixed", "scale=fixed&vmin=-0.5&vmax=0.5"),
        )
    }
    tissue = (slice(ty // 16 + 1, (ty + th) // 16 - 1), slice(tx // 16 + 1, (tx + tw) // 16 - 1))
    red = {
        mode: int((t[tissue][..., 0].astype(int) > t[tissue][..., 2].astype(int) + 60).sum())
        for mode, t in tiles.items()
    }
    assert red["slide"] > 0 and red["cohort"] == 0 and red["fixed"] > 0
    for bad in ("scale=fixed&vmin=1&vmax=0", "scale=fixed&vmin=x&vmax=1", "scale=percent"):
        assert raw_get(url, f"/tiles/normal/map/abmil/attention_raw/{level}/0_0.png?{bad}")[0] == 400


def test_patch_click_values_gallery_and_patch_image(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    x, y, _, _ = LESION
    info = get_json(url, f"/api/slides/lesion/patch?x={x + 10}&y={y + 10}")["heads"]["abmil"]
    assert (info["x"], info["y"]) == (x, y) and info["values"]["logit_tumor"] > 8
    assert set(info["values"]["instance_logits"]) == {"normal", "tumor"} and "manifold" in info["values"]
    both = get_json(url, f"/api/slides/lesion/patch?x={x + 10}&y={y + 10}")["heads"]
    assert both["ilam"]["values"]["logit_tumor"] == pytest.approx(info["values"]["logit_tumor"] / 2, rel=1e-5)
    assert get_json(url, "/api/slides/lesion/patch?x=10&y=10")["heads"] == {}
    top = get_json(url, "/api/slides/lesion/top?head=abmil&map=logit_tumor&k=4")
    assert len(top) == 4 and all(LESION[0] <= r["x"] < LESION[0] + LESION[2] for r in top)
    image = tile_rgba(url, f"/api/slides/lesion/patch/abmil/{top[0]['row']}.jpeg")
    assert image.shape == (256, 256, 4) and image[..., :3].std() > 5  # tissue, not blank


def test_patch_with_cams_shows_them(viewer: tuple[str, Path]) -> None:
    url, run = viewer
    from wsi_mil.explain.cams_file import read_cams

    cams = read_cams(run / "heatmaps" / "abmil" / "lesion" / "cams.h5")
    x, y = (int(v) for v in cams.coords[0])
    info = get_json(url, f"/api/slides/lesion/patch?x={x + 1}&y={y + 1}")["heads"]["abmil"]
    assert info["row"] == int(cams.rows[0]) and info["cams"] == ["gradcam"]
    image = tile_rgba(url, f"/api/slides/lesion/cam/abmil/gradcam/{info['row']}.png")
    assert image[:, :32, 0].mean() > image[:, 32:, 0].mean() + 40  # jet's red where the CAM is high
    tx, ty, tw, th = TISSUE
    other = get_json(url, f"/api/slides/lesion/patch?x={tx + tw - 10}&y={ty + th - 10}")["heads"]["abmil"]
    assert other["cams"] == []
    assert raw_get(url, f"/api/slides/lesion/cam/abmil/gradcam/{other['row']}.png")[0] == 404
    assert any(f.endswith("lesion/cams.h5") for f in get_json(url, "/api/slides/lesion/info")["files"])


@pytest.mark.parametrize(
    "target",
    [
        "/run/../secret.txt",
        "/run/%2e%2e/secret.txt",
        "/run/..%2Fsecret.txt",
        "/run/%2E%2E%2Fsecret.txt",
        "/run/heatmaps/..%2F..%2Fsecret.txt",
        "/run/../run-secret/x.txt",
        "/run//etc/passwd",
        "/run/%2Fetc%2Fpasswd",
        "/run/heatmaps/escape/secret.txt",
        "/run/.lock",
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/app.py",
        "/static/..%2F..%2Fapp.py",
        "/tiles/..%2F..%2Fetc%2Fpasswd/image/0/0_0.jpeg",
        "/api/slides/..%2F..%2Fsecret.txt/info",
        "/api/slides/%2Fetc%2Fpasswd/info",
        "/../../secret.txt",
        "//etc/passwd",
    ],
)
def test_traversal_is_refused(viewer: tuple[str, Path], target: str) -> None:
    url, _ = viewer
    status, body = raw_get(url, target)
    assert status in (400, 404), (target, status)
    assert SECRET.encode() not in body and b"root:" not in body


def test_run_files_are_served_read_only_to_this_machine(viewer: tuple[str, Path]) -> None:
    url, _ = viewer
    status, body = raw_get(url, "/run/manifest.csv")
    assert status == 200 and b"broken" in body
    assert raw_get(url, "/run/manifest.csv", method="POST")[0] == 405
    assert raw_get(url, "/run/manifest.csv", method="DELETE")[0] == 405
    assert raw_get(url, "/api/slides", host="attacker.example")[0] == 400  # DNS rebinding
    assert raw_get(url, "/api/slides", host="localhost")[0] == 200


def test_cli_binds_localhost_by_default_and_rejects_a_folder_without_scores(tmp_path: Path) -> None:
    args = build_parser().parse_args(["view", str(tmp_path)])
    assert args.host == "127.0.0.1"
    assert main(["view", str(tmp_path)]) == 2
    assert main(["view", str(tmp_path), "--port", "70000"]) == 2


def test_wsi_mil_view_command_serves_the_run(viewer: tuple[str, Path]) -> None:
    """The installed command, in its own process, on a free port of 127.0.0.1."""
    import subprocess
    import sys
    import time

    _, run = viewer
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "wsi_mil", "view", str(run), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, body = raw_get(f"http://127.0.0.1:{port}", "/api/slides")
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, "wsi-mil view did not start"
                time.sleep(0.1)
        assert status == 200 and b'"lesion"' in body
    finally:
        process.terminate()
        output, _ = process.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in output


def test_annotations_from_the_run_config_and_a_run_whose_slide_moved(viewer: tuple[str, Path], tmp_path: Path) -> None:
    """``run.masks`` of run_config.json is the default annotations folder; a missing slide file
    leaves the maps viewable on their own (the run copied to another machine)."""
    import json

    from wsi_mil.store.scores import read_scores, write_scores
    from wsi_mil.view.catalog import RunCatalog
    from wsi_mil.view.service import ViewerService

    _, run = viewer
    moved = tmp_path / "moved"
    scores = read_scores(run / "scores" / "abmil" / "lesion.h5")
    geometry = {**scores.coords_attrs, "slide_path": str(tmp_path / "gone.svs"), "level_dim": [4096, 3072]}
    write_scores(
        moved / "scores" / "abmil" / "lesion.h5", scores.coords, scores.maps, attrs=scores.attrs, coords_attrs=geometry
    )
    assert RunCatalog(moved).slide("lesion").annotation is None
    (moved / "run_config.json").write_text(json.dumps({"run": {"masks": str(run.parent / "masks")}}))
    catalog = RunCatalog(moved)
    assert catalog.slide("lesion").annotation == run.parent / "masks" / "lesion.geojson"
    service = ViewerService(catalog)
    info = service.slide_info("lesion")
    assert not info["has_image"] and (info["width"], info["height"]) == (4096, 3072) and info["mpp"] is None
    assert "gone.svs" in info["image_error"]
    level = info["max_level"] - 4
    scale = service.scale("lesion", "abmil", "logit_tumor", "slide")
    rgba = np.asarray(
        Image.open(io.BytesIO(service.overlay_tile("lesion", "abmil", "logit_tumor", level, 0, 0, scale=scale)))
    )
    x, y, w, h = (v // 16 for v in LESION)
    assert rgba[y + h // 2, x + w // 2, 0] > rgba[y + h // 2, x + w // 2, 2] + 60
    with pytest.raises(KeyError):
        service.slide_tile("lesion", level, 0, 0)
    (tmp_path / "gone.svs").write_bytes(b"not a slide at all")  # unreadable: the same, with the reader's reason
    unreadable = ViewerService(RunCatalog(moved)).slide_info("lesion")
    assert not unreadable["has_image"] and "not a readable slide" in unreadable["image_error"]


def test_cohort_values_read_each_file_once_and_cap_large_slides(
    viewer: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_mil.view import catalog as catalog_module

    _, run = viewer
    catalog = catalog_module.RunCatalog(run)
    full = catalog.cohort_values("abmil")
    assert len(full["logit_tumor"]) == sum(len(catalog.scores(s, "abmil").coords) for s in ("lesion", "normal"))
    monkeypatch.setattr(catalog_module, "COHORT_SAMPLE", 8)
    capped = catalog_module.RunCatalog(run).cohort_values("abmil")["logit_tumor"]
    assert len(capped) == 16  # 8 quantiles of each slide, its extremes included
    assert capped.max() == full["logit_tumor"].max() and capped.min() == full["logit_tumor"].min()
