"""MIL heads: the registry contract for every head, ILAM's exact decomposition, transformer bands."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from wsi_mil.mil import create_mil_model, list_mil_models, mil_model_config  # noqa: E402
from wsi_mil.mil.registry import MilModelError  # noqa: E402


def _bag(n: int = 50, dim: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=generator)
    coords = torch.stack([torch.arange(n) % 8, torch.arange(n) // 8], dim=1) * 512
    return features, coords


@pytest.mark.parametrize("name", list_mil_models())
@pytest.mark.parametrize("options", [{}, {"channel_attention": True, "instance_loss": True}])
def test_every_head_meets_the_output_contract(name: str, options: dict) -> None:
    torch.manual_seed(0)
    model = create_mil_model(name, in_dim=24, n_classes=3, **options).eval()
    features, coords = _bag()
    out = model(features, coords)
    assert out.logits.shape == (3,)
    assert out.attention_raw.shape == out.attention.shape == (50,)
    assert out.instance_logits.shape == (50, 3)
    torch.testing.assert_close(out.attention, torch.softmax(out.attention_raw, dim=0))
    assert mil_model_config(name).has_contribution == (out.contribution is not None)
    if options.get("instance_loss"):
        loss = model.clusterer.loss(out.embeddings, out.attention_raw, 2)
        loss.backward()
        assert torch.isfinite(loss) and loss > 0


def test_gated_abmil_is_clams_attn_net_gated() -> None:
    model = create_mil_model("abmil", in_dim=1024, n_classes=2, hidden_dim=512, attention_dim=256)  # CLAM's sizes
    assert model.projection[0].weight.shape == (512, 1024) and model.projection[2].p == 0.25
    assert model.attention.attention_a[0].weight.shape == (256, 512)
    assert isinstance(model.attention.attention_b[1], torch.nn.Sigmoid)
    assert model.classifier.weight.shape == (2, 512)
    default = create_mil_model("abmil", in_dim=1024, n_classes=2)  # measured default: half the width
    assert default.projection[0].weight.shape == (256, 1024) and default.attention.attention_a[0].weight.shape == (
        128,
        256,
    )
    plain = create_mil_model("abmil_plain", in_dim=1024, n_classes=2)
    assert not hasattr(plain.attention, "attention_b")


@pytest.mark.parametrize(
    "options",
    [{}, {"channel_attention": True}, {"transformer": True}, {"transformer": True, "transformer_max_instances": 16}],
)
def test_ilam_contributions_plus_global_term_equal_the_bag_logits(options: dict) -> None:
    torch.manual_seed(1)
    model = create_mil_model("ilam", in_dim=24, n_classes=3, **options).eval()
    features, coords = _bag(n=70)
    with torch.no_grad():
        out = model(features, coords, explain=True)
    s = model.latent(model.projection(features) if not options.get("channel_attention") else out.embeddings)
    torch.testing.assert_close(out.contribution, out.attention.unsqueeze(1) * s)
    torch.testing.assert_close(out.contribution.sum(dim=0) + out.global_logits, out.logits)
    z = out.attention @ out.embeddings
    torch.testing.assert_close(out.global_logits, model.global_head(z))
    if options.get("transformer"):
        assert out.relevance is not None and out.relevance.shape == (70,)
        assert float(out.relevance.sum()) == pytest.approx(1.0, abs=1e-5)
        assert bool((out.relevance >= 0).all())
    else:
        assert out.relevance is None


def test_transformer_bands_cap_attention_memory_and_keep_all_instances() -> None:
    torch.manual_seed(2)
    banded = create_mil_model("ilam", in_dim=24, n_classes=2, transformer=True, transformer_max_instances=10).eval()
    features, coords = _bag(n=45)
    with torch.no_grad():
        _, rollouts = banded.context(banded.projection(features), coords, rollout=True)
    sizes = [len(index) for index, _ in rollouts]
    assert sizes == [10, 10, 10, 10, 5]
    covered = torch.cat([index for index, _ in rollouts]).sort().values
    assert torch.equal(covered, torch.arange(45))
    first = coords[rollouts[0][0]]
    assert int(first[:, 1].max()) <= 512  # raster order: a band is neighbouring rows


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(MilModelError, match="ilam"):
        create_mil_model("abmil", in_dim=8, n_classes=2, transformer=True)
    with pytest.raises(MilModelError, match="allowed"):
        create_mil_model("abmil", in_dim=8, n_classes=2, hiddn_dim=3)
    with pytest.raises(MilModelError, match="unknown MIL head"):
        create_mil_model("clam_sb", in_dim=8, n_classes=2)
    with pytest.raises(MilModelError, match="2 classes"):
        create_mil_model("ilam", in_dim=8, n_classes=1)
