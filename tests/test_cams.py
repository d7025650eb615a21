"""Within-patch maps: the explained function is exact, maps are not scaled per patch,
every method runs, and sub-patch stitching puts each map on its patch."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("pytorch_grad_cam")

from wsi_mil.explain.cam import (  # noqa: E402
    CamError,
    ClassMargin,
    PatchContribution,
    compute_maps,
    find_target_layer,
)
from wsi_mil.explain.stitch import CanvasGeometry  # noqa: E402
from wsi_mil.explain.stitch_cams import stitch_patch_maps  # noqa: E402
from wsi_mil.features.registry import create_encoder  # noqa: E402
from wsi_mil.mil.registry import create_mil_model  # noqa: E402


@pytest.fixture(scope="module")
def encoder():
    return create_encoder("resnet18", weights="random")  # plumbing only: no accuracy claimed


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 64, 64, 3), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("name", ["abmil", "ilam"])
def test_patch_contributions_sum_to_the_bag_logits(encoder, name: str) -> None:
    torch.manual_seed(0)
    head = create_mil_model(name, in_dim=512, n_classes=3).eval()
    x = encoder.transform(_images(6))
    with torch.no_grad():
        bag = head(encoder.model(x))
        log_z = float(torch.logsumexp(bag.attention_raw.reshape(-1), 0))
        parts = PatchContribution(encoder.model, head, log_z)(x)
    expected = bag.logits - (bag.global_logits if bag.global_logits is not None else 0)
    torch.testing.assert_close(parts.sum(0), expected, rtol=1e-4, atol=1e-5)
    if bag.contribution is not None:
        torch.testing.assert_close(parts, bag.contribution, rtol=1e-4, atol=1e-6)


def test_class_margin() -> None:
    out = torch.tensor([[1.0, 4.0, 3.0], [0.0, 0.0, 6.0]])
    assert ClassMargin(1)(out).tolist() == [2.0, -3.0]
    assert float(ClassMargin(2)(out[1])) == 6.0


def _tiny_cnn() -> torch.nn.Module:
    """A 16-channel CNN with batch norm (FullGrad needs biases): plumbing only."""
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()


def test_every_method_runs_and_maps_keep_their_scale() -> None:
    torch.manual_seed(0)
    head = create_mil_model("ilam", in_dim=16, n_classes=2).eval()
    model = PatchContribution(_tiny_cnn(), head, 0.0)
    x = torch.randn(3, 3, 64, 64)
    maps = compute_maps(
        model,
        x,
        target=1,
        methods=["gradcam", "hirescam", "gradcam++", "layercam", "eigencam", "fullgrad", "integrated_gradients"],
        input_size=64,
        ig_steps=4,
    )
    for method, values in maps.items():
        assert values.shape == (3, 64, 64) and values.dtype == np.float32, method
        assert np.isfinite(values).all(), method
    # pytorch-grad-cam would scale each patch to [0, 1]; ours keep the raw values.
    peaks = maps["gradcam"].reshape(3, -1).max(axis=1)
    assert not np.allclose(peaks, 1.0)
    assert maps["integrated_gradients"].min() < 0 < maps["integrated_gradients"].max()  # signed


def test_score_and_ablation_cam_run() -> None:
    # One forward pass per feature channel: the tiny CNN keeps this fast.
    torch.manual_seed(0)
    model = PatchContribution(_tiny_cnn(), create_mil_model("abmil", in_dim=16, n_classes=2).eval(), 0.0)
    maps = compute_maps(model, torch.randn(2, 3, 64, 64), target=1, methods=["scorecam", "ablationcam"], input_size=64)
    assert {m.shape for m in maps.values()} == {(2, 64, 64)}
    assert all(np.isfinite(m).all() for m in maps.values())


def test_target_layer_is_the_last_feature_map(encoder) -> None:
    assert find_target_layer(encoder.model, 224) is encoder.model.layer4  # torchvision ResNet: the last stage
    vit = create_encoder("timm:vit_tiny_patch16_224", weights="random")
    with pytest.raises(CamError, match="integrated_gradients"):
        find_target_layer(vit.model, 224)
    with pytest.raises(CamError, match="unknown CAM method"):
        compute_maps(
            PatchContribution(encoder.model, create_mil_model("abmil", in_dim=512, n_classes=2), 0.0),
            encoder.transform(_images(1)),
            target=0,
            methods=["magic"],
            input_size=224,
        )


def test_stitched_maps_land_on_their_patches() -> None:
    ramp = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (8, 1))  # left 0 .. right 1
    coords = np.array([[512, 256], [768, 256]])  # two neighbouring 256-px patches
    canvas = stitch_patch_maps(
        coords,
        np.stack([ramp, ramp + 10]),
        patch_size_level0=256,
        geometry=CanvasGeometry.for_slide((2048, 1024), 4.0),
        chunks=(100, 100),
    ).compute()
    assert canvas.shape == (256, 512)
    left, right = canvas[64:128, 128:192], canvas[64:128, 192:256]
    assert np.isfinite(left).all() and np.isfinite(right).all()
    assert np.isnan(canvas[:64]).all() and np.isnan(canvas[:, :128]).all() and np.isnan(canvas[:, 256:]).all()
    assert left[:, 0].max() < 0.1 and left[:, -1].min() > 0.9  # the ramp runs left to right within the patch
    assert right.min() >= 10 and right.max() <= 11


def test_the_config_lists_exactly_the_cam_methods_the_code_runs() -> None:
    from wsi_mil.config import CAM_METHODS, DEFAULT_CAM_METHODS, HeatmapConfig
    from wsi_mil.explain.cam import CAM_CLASSES, INTEGRATED_GRADIENTS

    assert (*CAM_CLASSES, INTEGRATED_GRADIENTS) == CAM_METHODS
    assert HeatmapConfig().cam_methods == DEFAULT_CAM_METHODS and set(DEFAULT_CAM_METHODS) <= set(CAM_METHODS)
    assert inspect.signature(compute_maps).parameters["methods"].default == DEFAULT_CAM_METHODS  # one default


# --------------------------------------------------------------------------- the border ring (issue 12 item 4)


def _radial_profile(maps: np.ndarray) -> tuple[float, float, float]:
    """Mean of the maps (each divided by its own mean) in the outer 32 px, the next 32 px and
    the rest of a patch: (1, 1, 1) on a homogeneous texture when nothing is drawn at the border."""
    side = maps.shape[-1]
    distance = np.minimum.outer(*(np.minimum(np.arange(side), side - 1 - np.arange(side)),) * 2)
    mean = (maps / np.maximum(maps.mean(axis=(1, 2), keepdims=True), 1e-12)).mean(axis=0)
    return tuple(float(mean[(distance >= a) & (distance < b)].mean()) for a, b in ((0, 32), (32, 64), (64, side)))


@pytest.mark.slow
def test_cams_of_homogeneous_real_tissue_draw_no_border_ring(shared_data) -> None:
    """Real stroma (Kather 2016, mirrored into a seamless field), the real pretrained
    EfficientNet-Lite0: the mean CAM of patches cut from it must be flat from the border
    inwards. On the patch alone the encoder's zero padding dims the outer cells and raises
    the ones inside (Grad-CAM about 0.6 / 1.2 / 1.7): checked, so that this test can see a
    ring; with the default slide context around each patch the ring goes."""
    from PIL import Image

    from wsi_mil.config import HeatmapConfig
    from wsi_mil.explain.cam import context_margin, target_layer_and_stride
    from wsi_mil.explain.patch_cams import explain_patches

    torch.set_num_threads(1)
    lite0 = create_encoder("efficientnet_lite0", weights="imagenet")
    tile = np.asarray(
        Image.open(sorted((shared_data / "kather2016-samples" / "02_STROMA").glob("*.tif"))[0]).convert("RGB")
    )
    field = np.pad(tile[:150, :150], ((0, 750), (0, 750), (0, 0)), mode="symmetric")  # 900 px, 445 um
    size = lite0.config.input_size
    stride = target_layer_and_stride(lite0.model, size)[1]
    torch.manual_seed(0)
    head = create_mil_model(
        "abmil", in_dim=lite0.config.embed_dim, n_classes=2, hidden_dim=512, attention_dim=256
    ).eval()  # the random head the ring statistic was set with
    corners = [(x, y) for x in (180, 330, 480) for y in (200, 400)]

    def profiles(fraction: float) -> dict[str, tuple[float, float, float]]:
        pixels = context_margin(stride, size, fraction)
        margin = round(pixels * 256 / size)
        images = np.stack([field[y - margin : y + 256 + margin, x - margin : x + 256 + margin] for x, y in corners])
        maps, _, _ = explain_patches(
            images,
            encoder=lite0,
            head=head,
            log_normalizer=0.0,
            target=1,
            methods=["gradcam", "eigencam"],
            margin=margin,
            context=pixels,
        )
        assert {m.shape for m in maps.values()} == {(len(corners), size, size)}
        return {method: _radial_profile(values) for method, values in maps.items()}

    alone = profiles(0.0)["gradcam"]
    assert alone[0] < 0.8 and alone[2] > 1.3, alone  # the artefact, on the patch alone
    assert HeatmapConfig().cam_context > 0
    for method, (outer, band, inner) in profiles(HeatmapConfig().cam_context).items():
        assert outer > 0.85 and band < 1.15 and inner < 1.3, (method, outer, band, inner)
