"""The generic registry behind encoders and MIL heads: unknown names list the choices,
namespaces resolve a family of names through one handler, and the encoder's precision
comes from its registered config (for ``timm:<name>``, from the model's layers)."""

from __future__ import annotations

import pytest

from wsi_mil.errors import WsiMilError
from wsi_mil.registry import Entry, Registry


class UnknownThing(WsiMilError, ValueError):
    pass


def _registry() -> Registry[str, int]:
    registry: Registry[str, int] = Registry("thing", error=UnknownThing)
    registry.register("beta", "config b")(2)
    registry.register("alpha", "config a")(1)

    @registry.namespace("num", description="any integer", example="num:7")
    def _number(rest: str) -> Entry[str, int]:
        if not rest.isdigit():
            raise UnknownThing(f"num:{rest}: not an integer")
        return Entry(f"config {rest}", int(rest))

    return registry


def test_unknown_name_lists_every_choice_and_namespace() -> None:
    registry = _registry()
    with pytest.raises(UnknownThing) as raised:
        registry.get("gamma")
    message = str(raised.value)
    assert "unknown thing 'gamma'" in message and "alpha, beta" in message and "num:<name> (e.g. num:7)" in message
    with pytest.raises(UnknownThing, match="alpha, beta"):
        registry.get("other:7")  # a prefix nobody registered is just an unknown name


def test_names_entries_and_namespaces() -> None:
    registry = _registry()
    assert registry.names() == ["alpha", "beta"] and registry.names("b*") == ["beta"]
    assert registry.get("alpha") == Entry("config a", 1)
    assert registry.get("num:42") == Entry("config 42", 42)
    assert [ns.prefix for ns in registry.namespaces()] == ["num"]
    with pytest.raises(UnknownThing, match="not an integer"):
        registry.get("num:x")


def test_a_name_registers_once_and_colons_are_for_namespaces() -> None:
    registry = _registry()
    with pytest.raises(ValueError, match="twice"):
        registry.register("alpha", "again")(3)
    with pytest.raises(ValueError, match="reserved"):
        registry.register("num:1", "x")(1)


def test_entries_load_on_first_use() -> None:
    loads: list[int] = []
    registry: Registry[str, int] = Registry("thing", error=UnknownThing, load=lambda: loads.append(1))
    assert not loads
    assert registry.names() == [] and registry.names() == []
    assert loads == [1]


def test_encoders_and_heads_share_it() -> None:
    from wsi_mil.features.registry import ENCODERS, EncoderError, list_encoders
    from wsi_mil.mil.registry import MIL_MODELS, MilModelError, mil_model_config

    assert isinstance(ENCODERS, Registry) and isinstance(MIL_MODELS, Registry)
    assert "resnet50_trunc" in list_encoders() and [ns.prefix for ns in ENCODERS.namespaces()] == ["timm"]
    with pytest.raises(EncoderError, match=r"resnet50_trunc.*timm:<name>"):
        ENCODERS.get("resnet5000")
    with pytest.raises(MilModelError, match="abmil, abmil_plain, ilam"):
        mil_model_config("transmil")


def test_timm_namespace_resolves_through_its_handler() -> None:
    pytest.importorskip("timm")
    from wsi_mil.features.registry import ENCODERS, EncoderError, encoder_config

    config = encoder_config("timm:resnet10t")
    assert (config.name, config.embed_dim, config.input_size) == ("timm:resnet10t", 512, 176)  # timm's own cfg
    assert ENCODERS.get("timm:resnet10t").config is config  # resolved once, then cached
    with pytest.raises(EncoderError, match="timm has no model 'no_such_net'"):
        encoder_config("timm:no_such_net")


@pytest.mark.parametrize(
    ("name", "precision"),
    [
        ("timm:resnet10t", "float16"),  # BatchNorm CNN
        ("timm:beit_base_patch16_224", "bfloat16"),  # a transformer without "vit" in its name
        ("timm:convnext_atto", "bfloat16"),  # LayerNorm CNN
        ("timm:levit_128s", "float16"),  # "vit" in the name, BatchNorm throughout
    ],
)
def test_timm_precision_comes_from_the_layers_not_the_name(name: str, precision: str) -> None:
    pytest.importorskip("timm")
    from wsi_mil.features.registry import encoder_config

    assert encoder_config(name).precision == precision


def test_an_encoder_runs_at_its_registered_precision() -> None:
    pytest.importorskip("torch")
    from wsi_mil.features.registry import EncoderConfig, create_encoder, encoder_config

    assert encoder_config("uni").precision == "bfloat16" and encoder_config("resnet50_trunc").precision == "float16"
    encoder = create_encoder("resnet18", weights="random")
    assert encoder.precision == encoder.config.precision == "float16"
    with pytest.raises(ValueError, match="precision must be one of"):
        EncoderConfig("x", 8, precision="fp8")
