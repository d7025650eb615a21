"""The training recipe: standardization, mini-batches of bags, model selection, threads, repeats."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

from wsi_mil.config import Config, TrainConfig  # noqa: E402
from wsi_mil.mil.batching import pad_bags, plan_batches, training_batch_bags  # noqa: E402
from wsi_mil.mil.data import BagStore, find_feature_sets  # noqa: E402
from wsi_mil.mil.fold_io import load_fold_model  # noqa: E402
from wsi_mil.mil.registry import create_mil_model  # noqa: E402
from wsi_mil.mil.run import train_run  # noqa: E402
from wsi_mil.mil.synthetic import make_planted_bags, write_planted_bags  # noqa: E402
from wsi_mil.mil.train import FoldTrainer  # noqa: E402
from wsi_mil.store.scores import read_scores  # noqa: E402

SMALL = TrainConfig(epochs=3, min_epochs=1, hidden_dim=16, attention_dim=8, device="cpu", threads=1)


def bag_store(tmp_path: Path, bags: list, name: str = "features") -> BagStore:
    folder = write_planted_bags(bags, tmp_path / name)
    (feature_set,) = find_feature_sets([folder])
    return BagStore(feature_set, [b.slide_id for b in bags])


def test_standardization_statistics_come_from_the_training_bags_only(tmp_path: Path) -> None:
    bags = make_planted_bags(12, n_instances=(5, 9), dim=6, seed=1)
    train = [b.slide_id for b in bags[:8]]
    buffers = []
    for scale in (1.0, 1000.0):  # only the test bags change
        changed = [b if i < 8 else replace(b, features=b.features * scale + 50) for i, b in enumerate(bags)]
        store = bag_store(tmp_path, changed, f"features_{scale:g}")
        trainer = FoldTrainer(
            store, {b.slide_id: b.label for b in bags}, 2, config=SMALL, device=torch.device("cpu"), fold=0
        )
        trainer.fit_standardization(train)
        buffers.append((trainer.model.standardize.mean.clone(), trainer.model.standardize.inv_std.clone()))
    stacked = np.concatenate([b.features for b in bags[:8]]).astype(np.float64)
    np.testing.assert_allclose(buffers[0][0].numpy(), stacked.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(buffers[0][1].numpy(), 1 / stacked.std(0), rtol=1e-4)
    assert torch.equal(buffers[0][0], buffers[1][0]) and torch.equal(buffers[0][1], buffers[1][1])


def test_a_constant_channel_is_centred_not_divided_by_zero(tmp_path: Path) -> None:
    bags = make_planted_bags(12, n_instances=(5, 9), dim=6, seed=2)
    for bag in bags:
        bag.features[:, 3] = 7.0
    store = bag_store(tmp_path, bags)
    labels = {b.slide_id: b.label for b in bags}
    trainer = FoldTrainer(store, labels, 2, config=SMALL, device=torch.device("cpu"), fold=0)
    history = trainer.fit([b.slide_id for b in bags[:10]], [])
    assert history["standardization"]["constant_channels"] == 1
    assert float(trainer.model.standardize.inv_std[3]) == 1.0
    probs, loss = trainer.evaluate([b.slide_id for b in bags[10:]])
    assert np.isfinite(probs).all() and np.isfinite(loss)


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("abmil", {}),
        ("abmil_plain", {"channel_attention": True}),
        ("ilam", {"channel_attention": True}),
        ("ilam", {"transformer": True, "transformer_max_instances": 4}),
    ],
)
def test_a_padded_batch_equals_its_bags_one_at_a_time(model: str, options: dict) -> None:
    torch.manual_seed(0)
    head = create_mil_model(
        model, in_dim=5, n_classes=2, hidden_dim=16, attention_dim=8, instance_loss=True, instance_k=2, **options
    ).eval()
    head.standardize.set_statistics(np.arange(5.0), np.array([1.0, 2.0, 0.5, 3.0, 1.0]))
    sizes = (3, 7, 1, 5)
    bags = [(torch.randn(n, 5) * 3, torch.randint(0, 10, (n, 2)) * 256) for n in sizes]
    batch = pad_bags([f"s{i}" for i in range(len(bags))], bags)
    assert batch.mask is not None and batch.mask.sum(1).tolist() == list(sizes)
    with torch.no_grad():
        together = head(batch.features, batch.coords, mask=batch.mask, explain=True)
        for b, (features, coords) in enumerate(bags):
            alone = head(features, coords, explain=True)
            n = len(features)
            torch.testing.assert_close(together.logits[b], alone.logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(together.attention[b, :n], alone.attention, rtol=1e-5, atol=1e-6)
            assert float(together.attention[b, n:].abs().sum()) == 0.0  # padding gets no attention
            torch.testing.assert_close(together.instance_logits[b, :n], alone.instance_logits, rtol=1e-5, atol=1e-6)
            if alone.contribution is not None:
                torch.testing.assert_close(together.contribution[b, :n], alone.contribution, rtol=1e-5, atol=1e-6)
            if alone.relevance is not None:
                torch.testing.assert_close(together.relevance[b, :n], alone.relevance, rtol=1e-5, atol=1e-6)
        labels = torch.tensor([0, 1, 1, 0])
        losses = head.clusterer.loss(together.embeddings, together.attention_raw, labels, batch.mask)
        for b, (features, coords) in enumerate(bags):
            alone = head(features, coords)
            expected = head.clusterer.loss(alone.embeddings, alone.attention_raw, int(labels[b]))
            torch.testing.assert_close(losses[b], expected, rtol=1e-5, atol=1e-6)


def test_a_batch_step_has_the_mean_gradient_of_its_bags() -> None:
    torch.manual_seed(1)
    head = create_mil_model("ilam", in_dim=4, n_classes=2, hidden_dim=8, attention_dim=4, dropout=0.0)
    bags = [(torch.randn(n, 4), torch.zeros(n, 2, dtype=torch.int64)) for n in (2, 6, 4)]
    labels = torch.tensor([1, 0, 1])
    batch = pad_bags(["a", "b", "c"], bags)
    loss = torch.nn.functional.cross_entropy(head(batch.features, batch.coords, mask=batch.mask).logits, labels)
    together = torch.autograd.grad(loss, list(head.parameters()))
    singles = [
        torch.autograd.grad(
            torch.nn.functional.cross_entropy(head(f, c).logits[None], labels[i : i + 1]), list(head.parameters())
        )
        for i, (f, c) in enumerate(bags)
    ]
    for g, *parts in zip(together, *singles, strict=True):
        torch.testing.assert_close(g, sum(parts) / len(parts), rtol=1e-5, atol=1e-6)


def test_batches_are_bounded_in_bags_and_padded_rows() -> None:
    plan = plan_batches(list("abcdef"), [10, 10, 10, 500, 10, 10], batch_bags=4, max_rows=999)
    assert plan == [["a", "b", "c"], ["d"], ["e", "f"]]
    assert plan_batches(list("abc"), [3, 3, 3], batch_bags=2) == [["a", "b"], ["c"]]


def test_a_small_cohort_trains_a_fixed_budget_and_records_why(tmp_path: Path) -> None:
    bags = make_planted_bags(20, n_instances=(4, 8), dim=6, seed=3)
    labels = tmp_path / "labels.csv"
    write_planted_bags(bags, tmp_path / "run" / "features" / "toy", labels_csv=labels)
    train_run(tmp_path / "run", labels, config=Config(train=replace(SMALL, folds=2, epochs=4)))
    for fold in (0, 1):
        metrics = json.loads((tmp_path / "run" / "models" / "abmil" / f"fold_{fold}" / "metrics.json").read_text())
        selection = metrics["selection"]
        assert selection["rule"] == "fixed" and "auto needs 40" in selection["reason"]
        assert metrics["n_val"] > 0 and metrics["n_train_used"] == metrics["n_train"] + metrics["n_val"]
        assert metrics["best_epoch"] == 3 and metrics["epochs_run"] == 4 and "val_loss" not in metrics["history"][-1]
        # 10 training bags in batches of 8 would be 2 steps an epoch: batches of 1 make 10
        assert selection["batch_bags"] == 1 and "min_steps_per_epoch" in selection["batch_reason"]
        assert all(epoch["steps"] == metrics["n_train_used"] for epoch in metrics["history"])


def test_a_small_cohort_trains_in_smaller_batches() -> None:
    assert training_batch_bags(8, 32, 10)[0] == 3  # 11 steps an epoch instead of 4
    assert training_batch_bags(8, 80, 10) == (8, "train.batch_bags (8)")
    assert training_batch_bags(8, 5, 10)[0] == 1
    assert training_batch_bags(8, 32, 0)[0] == 8  # 0: always batch_bags
    assert training_batch_bags(1, 3, 10)[0] == 1


def test_early_stopping_never_keeps_an_epoch_before_min_epochs(tmp_path: Path) -> None:
    bags = make_planted_bags(24, n_instances=(4, 8), dim=6, seed=4)
    store = bag_store(tmp_path, bags)
    labels = {b.slide_id: b.label for b in bags}
    # constant lr (the default): the loss of the first epochs can stay the lowest, and must still not be kept
    config = replace(SMALL, selection="early_stopping", epochs=8, min_epochs=5, patience=1, lr=0.05, scheduler="none")
    history = FoldTrainer(store, labels, 2, config=config, device=torch.device("cpu"), fold=0).fit(
        [b.slide_id for b in bags[:16]], [b.slide_id for b in bags[16:]]
    )
    assert history["selection"]["rule"] == "early_stopping" and history["best_epoch"] >= 4


def test_predict_applies_the_folds_standardization(tmp_path: Path) -> None:
    from wsi_mil.mil.predict import predict_run

    bags = make_planted_bags(16, n_instances=(6, 10), dim=6, signal=4.0, seed=5)
    for bag in bags:  # unscaled features, as tabular MIL sets have them
        bag.features[:] = bag.features * 200 + 400
    labels = tmp_path / "labels.csv"
    write_planted_bags(bags, tmp_path / "run" / "features" / "toy", labels_csv=labels)
    train_run(tmp_path / "run", labels, config=Config(train=replace(SMALL, folds=2)))
    model_dir = tmp_path / "run" / "models" / "abmil"
    model, config = load_fold_model(model_dir / "fold_0", "cpu")
    assert config["head_options"]["standardize"] is True
    assert float(model.standardize.mean.mean()) == pytest.approx(400, rel=0.05)
    predict_run(tmp_path / "run", model_dir, device="cpu")
    with (model_dir / "fold_0" / "predictions.csv").open(newline="") as handle:
        trained = {r["slide_id"]: float(r["prob_1"]) for r in csv.DictReader(handle)}
    assert trained
    for slide_id, prob in trained.items():  # out of fold: predict scores with the same fold's model
        scores = read_scores(tmp_path / "run" / "scores" / "abmil" / f"{slide_id}.h5")
        assert float(np.asarray(scores.attrs["probs"])[1]) == pytest.approx(prob, abs=1e-5), slide_id


def test_metrics_do_not_depend_on_the_environments_thread_count(tmp_path: Path) -> None:
    bags = make_planted_bags(24, n_instances=(30, 60), dim=64, seed=6)
    labels = tmp_path / "labels.csv"
    write_planted_bags(bags, tmp_path / "run" / "features" / "toy", labels_csv=labels)
    tables = []
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
        subprocess.run(
            [
                sys.executable,
                "-m",
                "wsi_mil",
                "train",
                str(tmp_path / "run"),
                "--labels",
                str(labels),
                "--name",
                f"t{threads}",
                "--folds",
                "2",
                "--epochs",
                "3",
                "--device",
                "cpu",
            ],
            check=True,
            env=env,
            capture_output=True,
            timeout=300,
        )
        tables.append((tmp_path / "run" / "models" / f"t{threads}" / "metrics.csv").read_text())
        metrics = json.loads((tmp_path / "run" / "models" / f"t{threads}" / "fold_0" / "metrics.json").read_text())
        assert metrics["threads"] == 1  # chosen from the bag sizes, not from the environment
    assert tables[0] == tables[1]


def test_repeats_report_folds_repeats_and_pooled_auc(tmp_path: Path) -> None:
    bags = make_planted_bags(16, n_instances=(4, 8), dim=6, signal=4.0, seed=7)
    labels = tmp_path / "labels.csv"
    write_planted_bags(bags, tmp_path / "run" / "features" / "toy", labels_csv=labels)
    (result,) = train_run(tmp_path / "run", labels, config=Config(train=replace(SMALL, folds=2, repeats=3)))
    model_dir = tmp_path / "run" / "models" / "abmil"
    assert len(result.folds) == 6 and len(result.pooled) == 3
    splits = [(model_dir / sub / "splits.csv").read_text() for sub in (".", "repeat_1", "repeat_2")]
    assert len(set(splits)) == 3, "each repeat needs its own fold assignment"
    with (model_dir / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["fold"] for r in rows] == ["0", "1"] * 3 + ["mean", "std", "repeat_mean", "repeat_std"] + ["pooled"] * 3
    summary = (model_dir / "summary.md").read_text()
    assert "3 repeats of 2 folds" in summary and "pooled OOF ROC-AUC" in summary and "Over repeats" in summary


def test_training_on_prepared_bags_equals_standardizing_every_step(tmp_path: Path) -> None:
    """bfloat16 training from bags standardized once per fold gives the weights of
    standardizing inside the head at every step, bit for bit."""
    bags = make_planted_bags(10, n_instances=(4, 12), dim=6, seed=5)
    for bag in bags:
        bag.features[:] = bag.features * 300 + 120  # raw scales: standardization matters
    store = bag_store(tmp_path, bags)
    labels = {b.slide_id: b.label for b in bags}
    config = replace(SMALL, precision="bfloat16", batch_bags=4, min_steps_per_epoch=0)  # batches of 4 on 10 bags
    states = []
    for prepared in (True, False):
        torch.manual_seed(0)
        trainer = FoldTrainer(store, labels, 2, config=config, device=torch.device("cpu"), fold=0)
        if not prepared:
            trainer._training_source = lambda train: (store, False)  # type: ignore[method-assign]
        else:
            assert trainer._training_source(list(labels))[1], "an in-memory bfloat16 fold should prepare its bags"
        trainer.fit(list(labels), [])
        states.append(trainer.model.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_cpu_dropout_drops_p_scales_the_rest_and_repeats_with_the_seed() -> None:
    from wsi_mil.mil.dropout import Dropout

    layer = Dropout(0.25).train()
    x = torch.ones(400, 500)
    torch.manual_seed(3)
    first = layer(x)
    torch.manual_seed(3)
    assert torch.equal(first, layer(x))
    assert abs(float((first == 0).float().mean()) - 0.25) < 0.005
    assert first.unique().tolist() == [0.0, pytest.approx(4 / 3)]
    assert abs(float(first.mean()) - 1.0) < 0.01
    assert torch.equal(layer.eval()(x), x)
    x = torch.randn(30, 7, requires_grad=True)
    out = layer.train()(x)
    out.sum().backward()
    assert torch.equal(x.grad == 0, out == 0)  # the gradient flows through kept elements only


def test_the_optimizer_option_chooses_where_weight_decay_goes() -> None:
    from wsi_mil.config import load_config
    from wsi_mil.errors import ConfigError
    from wsi_mil.mil.compute import make_optimizer

    weight = torch.nn.Parameter(torch.ones(3))
    steps = {}
    for name in ("adamw", "adam"):
        weight.data.fill_(1.0)
        optimizer = make_optimizer([weight], replace(SMALL, optimizer=name, lr=0.1, weight_decay=0.5))
        weight.grad = torch.zeros(3)  # no data gradient: only weight decay moves the weight
        optimizer.step()
        steps[name] = 1.0 - float(weight.data[0])
    # AdamW shrinks by lr x wd = 0.05; Adam normalizes the L2 gradient wd x w: a full lr step of 0.1
    assert steps["adamw"] == pytest.approx(0.05) and steps["adam"] == pytest.approx(0.1, rel=1e-3)
    with pytest.raises(ConfigError, match="train.optimizer = 'sgd'; allowed values: adamw, adam"):
        load_config(None, sets=["train.optimizer=sgd"])
