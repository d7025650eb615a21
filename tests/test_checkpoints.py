"""Local checkpoints load strictly: every encoder weight filled with its shape, every checkpoint
weight used (a classifier head aside), or a clear error; and the registered ``uni`` encoder.

UNI is a ViT-L (300M parameters); the loading tests run its builder on a ViT-Ti with the
same LayerScale (``init_values``), and UNI's own architecture is checked on the meta device.
"""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")

from wsi_mil.features import (  # noqa: E402
    create_encoder,
    encoder_config,
    timm_encoders,
)
from wsi_mil.features.registry import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    EncoderError,
    WeightsUnavailableError,
    check_weights,
    make_batch_transform,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TINY = "vit_tiny_patch16_224"


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=generator)


@pytest.fixture
def tiny_uni(monkeypatch: pytest.MonkeyPatch) -> None:
    """``uni`` built by its own builder and kwargs (LayerScale), on a ViT-Ti."""
    monkeypatch.setattr(timm_encoders, "UNI_TIMM_ARCH", TINY)


def trained_like(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A state dict unlike any fresh initialisation (LayerScale gammas far from 1e-5 included)."""
    generator = torch.Generator().manual_seed(1)
    return {k: v + 0.02 * torch.randn(v.shape, generator=generator) for k, v in model.state_dict().items()}


def features(encoder, batch: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return encoder.model(encoder.transform(batch))


def reference_features(state: dict[str, torch.Tensor], batch: torch.Tensor, **kwargs) -> torch.Tensor:
    model = timm.create_model(TINY, pretrained=False, num_classes=0, **kwargs).eval()
    model.load_state_dict(state, strict=True)
    transform = make_batch_transform(encoder_config("uni" if "init_values" in kwargs else f"timm:{TINY}"))
    with torch.inference_mode():
        return model(transform(batch))


@pytest.mark.usefixtures("tiny_uni")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_uni_checkpoint_round_trip(tmp_path: Path, batch: torch.Tensor, suffix: str) -> None:
    state = trained_like(timm_encoders.create_uni_model())
    path = tmp_path / f"pytorch_model{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    encoder = create_encoder("uni", checkpoint_path=path)
    assert encoder.weights.startswith(f"checkpoint:pytorch_model{suffix}:")
    assert encoder.config.mean == IMAGENET_MEAN and encoder.config.std == IMAGENET_STD
    loaded = encoder.model.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    expected = reference_features(state, batch, **timm_encoders.UNI_TIMM_KWARGS)
    torch.testing.assert_close(features(encoder, batch), expected, rtol=0, atol=0)


@pytest.mark.usefixtures("tiny_uni")
def test_layerscale_mismatch_is_refused_both_ways(tmp_path: Path) -> None:
    plain = tmp_path / "plain_vit.pth"
    torch.save(timm.create_model(TINY, pretrained=False, num_classes=0).state_dict(), plain)
    with pytest.raises(EncoderError) as info:
        create_encoder("uni", checkpoint_path=plain)
    message = str(info.value)
    assert message.startswith("uni: checkpoint") and str(plain) in message
    assert "missing" in message and "blocks.0.ls1.gamma" in message

    with_layerscale = tmp_path / "uni_like.pth"
    torch.save(timm_encoders.create_uni_model().state_dict(), with_layerscale)
    with pytest.raises(EncoderError, match=r"no place in the encoder \(blocks\.0\.ls1\.gamma") as info:
        create_encoder(f"timm:{TINY}", checkpoint_path=with_layerscale)
    assert f"timm:{TINY}" in str(info.value) and "`uni`" in str(info.value)


def test_classifier_dropped_and_wrappers_unwrapped(tmp_path: Path, batch: torch.Tensor) -> None:
    with_head = timm.create_model(TINY, pretrained=False, num_classes=7)
    state = trained_like(with_head)
    assert {"head.weight", "head.bias"} <= set(state)
    path = tmp_path / "lightning.ckpt"
    wrapped = {f"module.{k}" if k.startswith("head.") else f"module.backbone.{k}": v for k, v in state.items()}
    torch.save({"state_dict": wrapped, "epoch": torch.tensor(3)}, path)
    encoder = create_encoder(f"timm:{TINY}", checkpoint_path=path)
    backbone = {k: v for k, v in state.items() if not k.startswith("head.")}
    torch.testing.assert_close(features(encoder, batch), reference_features(backbone, batch), rtol=0, atol=0)


def test_shape_mismatch_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "vit_256.pth"
    torch.save(timm.create_model(TINY, pretrained=False, num_classes=0, img_size=256).state_dict(), path)
    with pytest.raises(EncoderError, match=r"pos_embed \(1, 257, 192\) vs \(1, 197, 192\)") as info:
        create_encoder(f"timm:{TINY}", checkpoint_path=path)
    assert str(path) in str(info.value)


def test_torchvision_checkpoints_are_strict_too(tmp_path: Path) -> None:
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    incomplete, extra = tmp_path / "incomplete.pth", tmp_path / "with_projector.pth"
    torch.save({k: v for k, v in state.items() if k != "layer4.1.bn2.weight"}, incomplete)
    torch.save({**state, "projector.0.weight": torch.zeros(128, 512)}, extra)
    with pytest.raises(EncoderError, match=r"resnet18: .*1 encoder weight\(s\) missing from it \(layer4\.1\.bn2"):
        create_encoder("resnet18", checkpoint_path=incomplete)
    with pytest.raises(EncoderError, match=r"1 checkpoint weight\(s\) with no place in the encoder \(projector"):
        create_encoder("resnet18", checkpoint_path=extra)
    # CLAM's truncated ResNet-50 never uses layer4 or fc: a checkpoint may lack them
    full = torchvision.models.resnet50(weights=None).state_dict()
    torch.save({k: v for k, v in full.items() if not k.startswith(("layer4.", "fc."))}, tmp_path / "trunk.pth")
    encoder = create_encoder("resnet50_trunc", checkpoint_path=tmp_path / "trunk.pth")
    assert torch.equal(encoder.model.state_dict()["6.0.conv1.weight"], full["layer3.0.conv1.weight"])


def test_uni_is_declared_and_built_as_its_model_card_says() -> None:
    config = encoder_config("uni")
    assert (config.embed_dim, config.input_size, config.precision) == (1024, 224, "bfloat16")
    assert (config.mean, config.std) == (IMAGENET_MEAN, IMAGENET_STD)
    with torch.device("meta"):  # ViT-L's shapes without its 1.2 GB of weights
        model = timm_encoders.create_uni_model()
        out = model(torch.empty(2, 3, 224, 224))
    assert model.num_features == 1024 and tuple(out.shape) == (2, 1024)
    keys = model.state_dict()
    assert len([k for k in keys if k.endswith(("ls1.gamma", "ls2.gamma"))]) == 2 * 24
    assert not any(k.startswith("head.") for k in keys)


def test_uni_needs_its_checkpoint(tmp_path: Path) -> None:
    """Refused before anything is built (``check_weights`` is what a stage can call up front)."""
    with pytest.raises(WeightsUnavailableError, match="MahmoodLab/UNI.*pytorch_model.bin.*extract.checkpoint_path"):
        create_encoder("uni")
    with pytest.raises(EncoderError, match="not found"):
        check_weights("uni", checkpoint_path=tmp_path / "pytorch_model.bin")
    assert check_weights("uni", weights="random") == encoder_config("uni")
