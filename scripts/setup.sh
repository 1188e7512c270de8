#!/usr/bin/env bash
# Install the pinned environment (.venv) from uv.lock with every extra (book, test, data).
# uv reuses an up-to-date .venv in about 2 s; a cold install takes about half a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
fi
uv sync --frozen --all-extras --python 3.11 --quiet
.venv/bin/python -c "import torch, torchaudio, mltm; print(f'env ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}, mltm {mltm.__version__}')"
