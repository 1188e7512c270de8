#!/usr/bin/env bash
# The main job: set up the environment, build the datasets, execute every chapter with
# papermill and build the HTML book (warnings are errors).
#   bash scripts/book.sh         # config "ci": CPU, minutes
#   bash scripts/book.sh full    # config "full": the real runs (GPU), full-size datasets
set -euo pipefail
cd "$(dirname "$0")/.."
config="${1:-ci}"
case "$config" in ci|full) ;; *) echo "usage: bash scripts/book.sh [ci|full]" >&2; exit 2 ;; esac
bash scripts/setup.sh
bash data_scripts/build_all.sh "$config"
.venv/bin/python scripts/book.py execute --config "$config"
.venv/bin/python scripts/book.py build --executed "_build/executed/$config"
