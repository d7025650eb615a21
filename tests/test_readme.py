"""The README cannot go stale: its commands, flags, config keys, paths and code are checked
against the code.

- Every ``wsi-mil ...`` line of a fenced block is parsed by the real argparse parser and then
  run through the real ``main`` with the library stage functions replaced by recorders, so
  the real handler builds the real config: an unknown subcommand, flag, ``--set`` key, a
  bad value, an unregistered encoder or head, a missing config file all fail here.
- Flags, ``section.key`` config keys and repository paths mentioned anywhere in the text
  must exist; relative links and ``#anchors`` must resolve.
- Python blocks: ``from wsi_mil... import name`` must import, and calls of those names must
  fit their signatures.
- The block marked ``<!-- readme-test: run -->`` is run as written in a temporary folder
  holding a small generated cohort (slides/, labels.csv, masks/). The per-slide stages run
  in-process (``workers=0``) instead of on a local Dask cluster, to keep this file fast.
"""

from __future__ import annotations

import ast
import functools
import importlib
import inspect
import re
import shlex
import textwrap
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wsi_mil.cli import build_parser, main
from wsi_mil.config import SECTIONS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RUN_MARKER = "<!-- readme-test: run -->"
PROGRAMS = ("wsi-mil", ".venv/bin/wsi-mil")
#: Flags of other programs that the README mentions (napari's command line).
EXTERNAL_FLAGS = {"--plugin"}
CONFIG_KEY = re.compile(r"(?<![\w.])(" + "|".join(SECTIONS) + r")\.([a-z_]+)\b")


@dataclass(frozen=True)
class Block:
    lang: str
    lines: tuple[str, ...]
    line: int  #: 1-based line number of the opening fence
    run: bool  #: marked with RUN_MARKER


def fenced_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        match = re.match(r"^(\s*)```(\w*)\s*$", lines[index])  # also fences indented in a list item
        if not match:
            index += 1
            continue
        start = index
        end = next(i for i in range(start + 1, len(lines)) if lines[i].strip().startswith("```"))
        previous = next((lines[i].strip() for i in range(start - 1, -1, -1) if lines[i].strip()), "")
        body = textwrap.dedent("\n".join(lines[start + 1 : end])).splitlines()
        blocks.append(Block(match.group(2), tuple(body), start + 1, previous == RUN_MARKER))
        index = end + 1
    return blocks


def shell_commands(lines: tuple[str, ...] | list[str]) -> list[str]:
    """Command lines (continuations joined, a leading ``$ `` dropped)."""
    commands, pending = [], ""
    for raw in lines:
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.removeprefix("$ ")
        if line and not line.startswith("#"):
            commands.append(line)
    return commands


def wsi_mil_argv(command: str) -> list[str] | None:
    """The arguments of a ``wsi-mil`` command line (comments dropped), or None for another program."""
    if command.split(maxsplit=1)[0] not in PROGRAMS:
        return None
    return shlex.split(command, comments=True)[1:]


def readme_commands() -> list[tuple[int, str, list[str]]]:
    found = []
    for block in fenced_blocks(README.read_text()):
        if block.lang not in ("", "bash", "sh", "console", "shell"):
            continue
        for command in shell_commands(block.lines):
            argv = wsi_mil_argv(command)
            if argv is not None:
                found.append((block.line, command, argv))
    return found


def parse_or_fail(argv: list[str], where: str) -> Any:
    try:
        return build_parser().parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"{where}: the wsi-mil parser rejects {' '.join(argv)!r} (exit {error.code})")


# ---------------------------------------------------------------------- dry run


@pytest.fixture
def dry_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """Replace every stage function the CLI calls with a recorder that checks names and returns
    nothing to do; ``calls`` maps the stage to the config (or arguments) it was called with."""
    from wsi_mil import demo, pipeline
    from wsi_mil.explain import evaluate, maps
    from wsi_mil.explain import heatmap as heatmap_module
    from wsi_mil.features import extract
    from wsi_mil.io import discover
    from wsi_mil.io.discover import SlideSource
    from wsi_mil.mil import predict, run
    from wsi_mil.mil.registry import mil_model_config
    from wsi_mil.tiling import tile

    calls: dict[str, Any] = {}
    encoder_config = _cached_encoder_config

    def record(stage: str, value: Any, result: Any = ()) -> Any:
        calls[stage] = value
        return list(result) if isinstance(result, tuple) else result

    def check_maps(config: Any) -> None:
        for name in config.heatmap.maps:
            known = name in maps.VECTOR_MAPS or name.split("_")[0] in ("logit", "contribution")
            assert known, f"unknown map {name!r}"

    def evaluate_maps(run_dir: Any, **kwargs: Any) -> evaluate.MapsEvaluation:
        (tmp_path / "explanations.md").write_text("table\n")
        calls["evaluate-maps"] = kwargs
        return evaluate.MapsEvaluation([], tmp_path, [])

    def run_pipeline(config: Any, **_: Any) -> Any:
        encoder_config(config.extract.encoder)
        for head in config.run.models or (config.train.model,):
            mil_model_config(head)
        check_maps(config)
        return record("run", config, pipeline.PipelineResult(tmp_path, []))

    monkeypatch.setattr(discover, "find_slides", lambda paths, **_: [SlideSource(Path("slide.svs"), "slide")])
    monkeypatch.setattr(tile, "tile_slides", lambda sources, out, *, config, **_: record("tile", config))
    monkeypatch.setattr(
        extract,
        "extract_run",
        lambda run_dir, *, config, **_: (encoder_config(config.extract.encoder), record("extract", config))[1],
    )
    monkeypatch.setattr(
        run,
        "train_run",
        lambda run_dir, labels, *, config, **_: (mil_model_config(config.train.model), record("train", config))[1],
    )
    monkeypatch.setattr(predict, "predict_run", lambda run_dir, model_dir, **kwargs: record("predict", kwargs))
    monkeypatch.setattr(
        heatmap_module,
        "heatmap_run",
        lambda run_dir, *, config, **_: (check_maps(config), record("heatmap", config))[1],
    )
    monkeypatch.setattr(evaluate, "evaluate_maps", evaluate_maps)
    monkeypatch.setattr(pipeline, "run_pipeline", run_pipeline)
    finished = SimpleNamespace(pipeline=SimpleNamespace(failed=0))
    monkeypatch.setattr(demo, "run_demo", lambda **kwargs: record("demo", kwargs, finished))
    monkeypatch.setattr(demo, "format_report", lambda result: "report")
    from wsi_mil import view

    monkeypatch.setattr(view, "serve", lambda run_dir, **kwargs: record("view", kwargs))
    monkeypatch.chdir(ROOT)  # configs/... paths as written
    return calls


@functools.cache
def _cached_encoder_config(name: str) -> Any:
    """The registry's check; for ``timm:<name>`` only that timm has the model (building it is slow)."""
    if name.startswith("timm:"):
        import timm

        assert timm.is_model(name.split(":", 1)[1]), f"timm has no model {name}"
        return name
    from wsi_mil.features.registry import encoder_config

    return encoder_config(name)


COMMANDS = readme_commands()


def test_the_readme_has_commands_for_every_stage() -> None:
    used = {argv[0] for _, _, argv in COMMANDS if argv}
    assert {"tile", "extract", "train", "predict", "heatmap", "evaluate-maps", "run", "encoders", "demo"} <= used
    assert any("--set" in argv for _, _, argv in COMMANDS)


@pytest.mark.parametrize(("line", "command", "argv"), COMMANDS, ids=[f"L{line}:{c[:60]}" for line, c, _ in COMMANDS])
def test_every_command_parses_and_builds_its_config(
    line: int, command: str, argv: list[str], dry_run: dict[str, Any]
) -> None:
    where = f"README.md block at line {line}: {command}"
    args = parse_or_fail(argv, where)
    assert main(argv) == 0, f"{where}: the command fails before any work (see the log above)"
    if args.command != "encoders":
        assert args.command in dry_run, f"{where}: did not reach the {args.command} stage"


@pytest.mark.parametrize(
    "argv",
    [
        ["tile", "slides", "--out", "run", "--target-mpp", "0.5", "--tissue-treshold", "0.4"],  # misspelt flag
        ["train", "run", "--labels", "labels.csv", "--set", "train.epoch=5"],  # unknown key
        ["extract", "run", "--encoder", "resnet51"],  # unregistered encoder
        ["run", "configs/camelyon17.yaml"],  # no such config
        ["heatmap", "run", "--formats", "png", "svg"],  # unknown format
    ],
)
def test_the_dry_run_rejects_what_the_readme_must_not_say(argv: list[str], dry_run: dict[str, Any]) -> None:
    try:
        code = main(argv)
    except SystemExit as error:  # argparse
        code = error.code
    except Exception:  # noqa: BLE001 -- a stage check (unknown encoder) raising in the recorder
        code = -1
    assert code != 0


def test_make_targets_exist() -> None:
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    mentioned = set(re.findall(r"`make (\w+)`", README.read_text()))
    for block in fenced_blocks(README.read_text()):
        mentioned |= {c.split()[1] for c in shell_commands(block.lines) if c.startswith("make ")}
    assert {"demo", "test"} <= mentioned and mentioned <= targets, mentioned - targets


# ---------------------------------------------------------------------- text


def _all_options() -> set[str]:
    parser = build_parser()
    options = set(parser._option_string_actions)
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for sub in subparsers.choices.values():
        options |= set(sub._option_string_actions)
    return options


def test_every_flag_mentioned_exists() -> None:
    mentioned = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", README.read_text()))
    unknown = mentioned - _all_options() - EXTERNAL_FLAGS
    assert not unknown, f"README mentions flags no wsi-mil command has: {sorted(unknown)}"


def test_every_config_key_mentioned_exists() -> None:
    import dataclasses

    text = README.read_text()
    spans = re.findall(r"`([^`\n]+)`", text) + [line for b in fenced_blocks(text) for line in b.lines]
    keys = {(m.group(1), m.group(2)) for span in spans for m in CONFIG_KEY.finditer(span)}
    assert len(keys) > 20
    unknown = [f"{s}.{k}" for s, k in keys if k not in {f.name for f in dataclasses.fields(SECTIONS[s])}]
    assert not unknown, f"README mentions config keys that do not exist: {sorted(unknown)}"


def _repo_paths(text: str) -> set[str]:
    found = set()
    for span in re.findall(r"`([^`\n]+)`", text) + re.findall(r"\]\(([^)#\s]+)", text):
        for word in span.split():
            word = word.rstrip(".,;:)")
            if re.match(r"^(configs|tests|pipelines|docs|bench|wsi_mil)/", word) and not re.search(
                r"[<*]|\.\.\.", word
            ):
                found.add(word)
    for block in fenced_blocks(text):
        found |= set(re.findall(r"(?<![\w/])(?:configs|pipelines)/[\w.-]+", "\n".join(block.lines)))
    return found


def test_every_repository_path_and_link_exists() -> None:
    text = README.read_text()
    paths = _repo_paths(text)
    assert {"configs/camelyon16.yaml", "configs/breakhis.yaml", "configs/cluster.yaml"} <= paths
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"README names files that do not exist: {missing}"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://")):
            continue
        path, _, anchor = target.partition("#")
        if path:
            assert (ROOT / path).exists(), target
        if anchor and not path:
            assert anchor in _anchors(text), f"no heading for #{anchor}"


def _anchors(text: str) -> set[str]:
    headings = re.findall(r"^#+ (.+)$", text, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_picture_is_small() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text())
    assert images, "the README shows a heatmap"
    for image in images:
        assert (ROOT / image).stat().st_size < 300_000, image


# ---------------------------------------------------------------------- python


def _python_blocks() -> list[Block]:
    return [b for b in fenced_blocks(README.read_text()) if b.lang == "python"]


@pytest.mark.parametrize("block", _python_blocks(), ids=lambda b: f"L{b.line}")
def test_python_blocks_import_and_call_what_exists(block: Block) -> None:
    tree = ast.parse("\n".join(block.lines))
    names: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("wsi_mil"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in names:
            signature = inspect.signature(names[node.func.id])
            try:
                signature.bind(*[None] * len(node.args), **{k.arg: None for k in node.keywords if k.arg})
            except TypeError as error:
                pytest.fail(
                    f"README line {block.line + node.lineno}: {node.func.id}(...) does not fit {signature}: {error}"
                )


# ---------------------------------------------------------------------- the first run, for real


def _run_block() -> Block:
    marked = [b for b in fenced_blocks(README.read_text()) if b.run]
    assert len(marked) == 1, f"expected one block marked {RUN_MARKER}"
    return marked[0]


@pytest.fixture
def small_cohort(tmp_path: Path) -> Path:
    """slides/ (4 synthetic pyramidal slides, 2 per class), labels.csv and masks/ (GeoJSON)."""
    import json

    from wsi_mil.synthetic import Region, write_synthetic_slide

    lines = ["slide_id,label"]
    (tmp_path / "masks").mkdir()
    for index in range(4):
        slide_id = f"case{index}"
        x = 256 * (1 + index % 2)
        write_synthetic_slide(
            tmp_path / "slides" / f"{slide_id}.svs",
            width=1280,
            height=1024,
            mpp=0.5,
            regions=[Region(x, 256, 768, 512)],
            downsamples=(1, 4),
        )
        lines.append(f"{slide_id},{'tumor' if index % 2 else 'normal'}")
        square = [[x, 256], [x + 512, 256], [x + 512, 512], [x, 512], [x, 256]]
        feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}, "properties": {}}
        (tmp_path / "masks" / f"{slide_id}.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "features": [feature]})
        )
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


@pytest.mark.usefixtures("one_torch_thread")
def test_the_first_run_block_runs_as_written(small_cohort: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wsi_mil import parallel

    in_process = parallel.map_slides

    def map_slides(*args: Any, **kwargs: Any) -> None:
        kwargs.update(workers=0, scheduler=None)
        in_process(*args, **kwargs)

    monkeypatch.setattr(parallel, "map_slides", map_slides)
    monkeypatch.chdir(small_cohort)
    block = _run_block()
    commands = shell_commands(block.lines)
    assert [wsi_mil_argv(c)[0] for c in commands] == ["tile", "extract", "train", "predict", "heatmap", "evaluate-maps"]
    for command in commands:
        assert main(wsi_mil_argv(command)) == 0, f"README line {block.line}: {command}"
    run = small_cohort / "run"
    assert sorted(p.name for p in (run / "bags").glob("*.h5")) == [f"case{i}.h5" for i in range(4)]
    assert (run / "models" / "abmil" / "summary.md").exists()
    for name in ("attention_pct_overlay.png", "logit_tumor_overlay.png", "patches.geojson"):
        assert (run / "heatmaps" / "abmil" / "case1" / name).exists(), name
    assert "## Localization" in (run / "explanations" / "abmil" / "explanations.md").read_text()
