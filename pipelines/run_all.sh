#!/usr/bin/env bash
# Every stage of a run with the staged scripts of this folder, one after the other:
#   01_tile -> 02_extract -> 03_train (train + predict) -> 04_heatmap -> 05_evaluate
#
# Usage:
#   pipelines/run_all.sh CONFIG SLIDES RUN_DIR LABELS HEAD [MASKS]
#
#   CONFIG   YAML config, e.g. configs/default.yaml (tiling, extract, train, heatmap, parallel)
#   SLIDES   a slide folder (recursive), one slide, or a CSV with a 'path' column
#   RUN_DIR  the run directory: bags/, features/, models/HEAD/, scores/HEAD/, heatmaps/HEAD/, explanations/HEAD/
#   LABELS   CSV: slide_id,label[,patient_id][,split]
#   HEAD     MIL head: abmil, abmil_plain or ilam (leave train.name unset in CONFIG)
#   MASKS    optional: folder of <slide_id>.png|.geojson|.xml annotations for the localization table
#
# Example:
#   PYTHON=.venv/bin/python pipelines/run_all.sh configs/default.yaml /data/slides /data/run /data/labels.csv ilam
#
# PYTHON (default: python) runs the scripts. Rerunning resumes: finished outputs are
# skipped. The first failing stage stops the script with its exit status. The scripts
# keep no record of the config: `wsi-mil run CONFIG` (one config file, several heads,
# run_config.json, refuses to mix settings) is the checked way to do the same.
set -euo pipefail

if [[ $# -lt 5 || $# -gt 6 ]]; then
    sed -n '2,/^set -euo pipefail/s/^# \{0,1\}//p' "$0" >&2
    exit 2
fi
CONFIG=$1 SLIDES=$2 RUN_DIR=$3 LABELS=$4 HEAD=$5
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYTHON:-python}

"$PYTHON" "$HERE/01_tile.py" "$SLIDES" "$RUN_DIR" --config "$CONFIG"
"$PYTHON" "$HERE/02_extract.py" "$RUN_DIR" --config "$CONFIG"
"$PYTHON" "$HERE/03_train.py" "$RUN_DIR" --labels "$LABELS" --config "$CONFIG" --model "$HEAD"
"$PYTHON" "$HERE/04_heatmap.py" "$RUN_DIR" --config "$CONFIG" --model "$HEAD"
"$PYTHON" "$HERE/05_evaluate.py" "$RUN_DIR" --model "$HEAD" ${6:+--masks "$6"}
