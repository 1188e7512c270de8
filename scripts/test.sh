#!/usr/bin/env bash
# Everything CI checks: environment, lint (ruff: pyflakes, lines of at most 100 characters,
# docstrings on the library's public API; configured in pyproject.toml), CI-size datasets,
# goldens in sync with the chapters, the book built with warnings as errors, then the unit tests
# and the nbval regression check in one pytest run.
#
# Each chapter is executed once: the goldens (book/golden/*.ipynb) are the chapters executed by
# papermill with the CI config, `check-goldens` proves they match the current sources, nbval
# re-executes every one of them and fails on any changed output, and the book is built from
# them. (`bash scripts/book.sh` executes the chapters afresh instead.)
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/setup.sh
.venv/bin/ruff check mltm scripts data_scripts benchmarks tests   # fails fast, before the data
bash data_scripts/build_all.sh ci
export MLTM_REQUIRE_DATA=1   # tests that use the built datasets fail, not skip, if they are missing
.venv/bin/python scripts/book.py check-goldens
.venv/bin/python scripts/book.py build --executed book/golden
echo "setup, data and book: $((SECONDS - start)) s"
# MLTM_TEST_WORKERS=N runs pytest on N workers (pytest-xdist, `--dist loadscope`: the cells of a
# notebook stay in one worker, in order). Off by default: measured on 2 cores it took 2020 s
# against 1215-1431 s serially (the chapters run one thread, and workers wait on each other's
# feature-cache locks).
.venv/bin/pytest tests book/golden --nbval --nbval-current-env \
    --nbval-sanitize-with book/nbval_sanitize.cfg --durations=30 \
    $( [ "${MLTM_TEST_WORKERS:-0}" -gt 0 ] && echo "-n ${MLTM_TEST_WORKERS} --dist loadscope" )
echo "total: $((SECONDS - start)) s"
