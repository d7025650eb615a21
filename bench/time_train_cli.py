"""Wall and CPU seconds of one ``train_run`` with the default config on a set of bench_mil_recipe.py. Not a test.

    .venv/bin/python bench/time_train_cli.py tiny-easy                       # this checkout
    PYTHONPATH=/path/to/old/checkout .venv/bin/python bench/time_train_cli.py tiny-easy   # another version

Used for "tiny-bag training is >= 10x faster than before" in BENCHMARKS.md: the same set,
the same command, two versions of the code, CPU seconds beside wall seconds (other load
on the machine inflates wall time, far less CPU time). Leaves torch's thread count to the
code under test, as ``wsi-mil train`` does.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / ".cache" / "recipe"


def main() -> None:
    import wsi_mil
    from wsi_mil.config import load_config
    from wsi_mil.mil.run import train_run

    name = sys.argv[1] if len(sys.argv) > 1 else "tiny-easy"
    folds = sys.argv[2] if len(sys.argv) > 2 else "10"
    folder = CACHE / name
    config = load_config(None, sets=["train.model=abmil", f"train.folds={folds}", "train.name=timing"])
    wall, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    train_run(
        CACHE / "runs" / f"timing-{name}-{os.getpid()}",
        folder / "labels.csv",
        config=config,
        features=[folder / "features"],
        overwrite=True,
    )
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime
    print(f"{name}: {wsi_mil.__file__}: wall {time.perf_counter() - wall:.1f} s, CPU {cpu:.1f} s")


if __name__ == "__main__":
    main()
