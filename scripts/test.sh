#!/usr/bin/env bash
# Everything CI checks: environment, CI-size datasets, goldens in sync with the chapters,
# chapters executed by papermill and the book built with warnings as errors, then the unit
# tests and the nbval regression check of the golden notebooks in one pytest run.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
bash data_scripts/build_all.sh ci
export MLTM_REQUIRE_DATA=1   # tests that use the built datasets fail, not skip, if they are missing
.venv/bin/python scripts/book.py check-goldens
.venv/bin/python scripts/book.py execute --config ci
.venv/bin/python scripts/book.py build --executed _build/executed/ci
echo "setup, data, chapters and book: $((SECONDS - start)) s"
.venv/bin/pytest tests book/golden --nbval --nbval-current-env \
    --nbval-sanitize-with book/nbval_sanitize.cfg
