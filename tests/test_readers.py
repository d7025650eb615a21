"""Every reader backend honours the same OpenSlide-shaped contract."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_mil.errors import SlideOpenError, SlideReadError
from wsi_mil.io import open_slide
from wsi_mil.io.base import SlideReader

SLIDE_BACKENDS = ["openslide", "tiffslide"]


@pytest.fixture(scope="module")
def plain_images(tmp_path_factory: pytest.TempPathFactory, reference_slide: Path) -> dict[str, Path]:
    """The reference slide's level 1 saved as PNG and as a flat TIFF."""
    import tifffile

    folder = tmp_path_factory.mktemp("plain")
    with open_slide(reference_slide, reader="openslide") as slide:
        rgb = slide.read_region((0, 0), 1, slide.level_dimensions[1], as_array=True)
    Image.fromarray(rgb).save(folder / "field.png")
    tifffile.imwrite(
        folder / "field.tif", rgb, photometric="rgb", resolution=(1e4 / 2.0, 1e4 / 2.0), resolutionunit="CENTIMETER"
    )
    return {"png": folder / "field.png", "tif": folder / "field.tif", "rgb": rgb}  # type: ignore[dict-item]


@pytest.mark.parametrize("backend", SLIDE_BACKENDS)
def test_contract_on_synthetic_slide(reference_slide: Path, backend: str) -> None:
    with open_slide(reference_slide, reader=backend) as slide:
        assert isinstance(slide, SlideReader)
        assert slide.backend == backend
        assert slide.dimensions == (4096, 3072)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))
        assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
        assert slide.mpp == pytest.approx(0.5)
        assert slide.objective_power == pytest.approx(20)
        region = slide.read_region((1024, 512), 0, (64, 32))
        assert region.mode == "RGB" and region.size == (64, 32)
        array = slide.read_region((0, 0), 2, (256, 192), as_array=True)
        assert array.shape == (192, 256, 3) and array.dtype == np.uint8
        thumb = slide.get_thumbnail((128, 128))
        assert max(thumb.size) == 128


def test_readers_agree_on_pixels(reference_slide: Path) -> None:
    regions = {}
    for backend in SLIDE_BACKENDS:
        with open_slide(reference_slide, reader=backend) as slide:
            regions[backend] = slide.read_region((900, 400), 0, (400, 300), as_array=True).astype(int)
    assert np.abs(regions["openslide"] - regions["tiffslide"]).max() <= 2


def test_readers_agree_on_real_aperio_slide(shared_data: Path) -> None:
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    regions = {}
    for backend in SLIDE_BACKENDS:
        with open_slide(path, reader=backend) as slide:
            regions[backend] = slide.read_region((1000, 1200), 0, (300, 300), as_array=True).astype(int)
    difference = np.abs(regions["openslide"] - regions["tiffslide"])
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 8  # JPEG decoder tolerance
    assert regions["openslide"].std() > 10  # real tissue, not a blank region


def test_outside_slide_reads_as_background(reference_slide: Path) -> None:
    with open_slide(reference_slide, reader="openslide") as slide:
        array = slide.read_region((4096 - 8, 0), 0, (16, 16), as_array=True)
    assert (array[:, 8:] == 255).all()


@pytest.mark.parametrize("kind", ["png", "tif"])
def test_plain_image_virtual_pyramid(plain_images: dict, kind: str) -> None:
    rgb = plain_images["rgb"]
    # auto would pick tiffslide for the flat TIFF (see the next test); force the image reader
    with open_slide(plain_images[kind], reader="image" if kind == "tif" else "auto") as slide:
        assert slide.backend == "image"
        assert slide.dimensions == (1024, 768)
        assert slide.level_dimensions[1] == (512, 384)
        assert slide.level_downsamples[1] == pytest.approx(2.0)
        np.testing.assert_array_equal(slide.read_region((100, 50), 0, (40, 30), as_array=True), rgb[50:80, 100:140])
        coarse = slide.read_region((0, 0), 1, (512, 384), as_array=True)
        assert abs(coarse.astype(float).mean() - rgb.astype(float).mean()) < 1.0
        if kind == "tif":
            assert slide.mpp == pytest.approx(2.0)  # resolution tags in centimetres
        else:
            assert slide.mpp is None


@pytest.mark.restricted_data
def test_auto_picks_tiffslide_for_strip_tiff(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "kidney-ihc-strip.tif") as slide:
        assert slide.backend == "tiffslide"
        assert slide.dimensions == (1493, 901)


@pytest.mark.restricted_data
def test_dicom_folder_is_one_slide(shared_data: Path) -> None:
    with open_slide(shared_data / "dicom-boxes") as slide:
        assert slide.backend == "openslide"
        assert slide.dimensions == (16, 16)
        assert slide.mpp == pytest.approx(0.499)


def test_ndpi_with_awkward_name(shared_data: Path) -> None:
    with open_slide(shared_data / "slides" / "test3-DAPI-2-(387).ndpi") as slide:
        assert slide.level_count == 7
        assert slide.mpp == pytest.approx(0.22817, rel=1e-3)


@pytest.mark.restricted_data
@pytest.mark.parametrize(
    ("name", "error"),
    [("not-a-tiff.svs", SlideOpenError), ("unopenable.tiff", SlideReadError), ("unreadable.svs", SlideReadError)],
)
def test_bad_files_fail_with_a_clear_error(shared_data: Path, name: str, error: type) -> None:
    path = shared_data / "bad" / name
    with pytest.raises(error) as info:
        open_slide(path)
    message = str(info.value)
    assert str(path) in message
    assert "re-copy" in message or "--reader" in message  # says what to do


def test_missing_file_and_unknown_reader(tmp_path: Path, reference_slide: Path) -> None:
    with pytest.raises(SlideOpenError, match="no such file"):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(ValueError, match="unknown reader"):
        open_slide(reference_slide, reader="bioformats")
