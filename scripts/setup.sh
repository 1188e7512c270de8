#!/usr/bin/env bash
# Install the pinned environment (.venv) from uv.lock with every extra (book, test, data), the
# MathJax the book serves (npm, package-lock.json) and Debian's Chromium for the browser test.
# uv reuses an up-to-date .venv in about 2 s; a cold install takes about half a minute.
# MathJax: `npm ci`, about 2 s, skipped when node_modules holds the locked version.
# Chromium: `apt-get install chromium`, about 50 s once (root or sudo), skipped when installed.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v uv >/dev/null 2>&1; then
    python3 -m pip install --quiet --disable-pip-version-check "uv>=0.5,<1"
fi
uv sync --frozen --all-extras --python 3.11 --quiet

apt_install() {  # apt_install PACKAGE...: as root, or through sudo
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "setup: need root or sudo to apt-get install $*" >&2; exit 1; }
        sudo="sudo"
    fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}
command -v npm >/dev/null 2>&1 || apt_install npm
command -v chromium >/dev/null 2>&1 || apt_install chromium
# The book serves MathJax itself (scripts/book.py build copies node_modules/mathjax/es5).
locked=$(node -p 'require("./package-lock.json").packages["node_modules/mathjax"].version')
installed=$(node -p 'try { require("./node_modules/mathjax/package.json").version } catch (e) { "" }')
if [ "$locked" != "$installed" ]; then
    npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
fi

.venv/bin/python -c "import torch, torchaudio, mltm; print(f'env ok: torch {torch.__version__}, torchaudio {torchaudio.__version__}, mltm {mltm.__version__}')"
echo "book ok: MathJax $(node -p 'require("./node_modules/mathjax/package.json").version'), $(chromium --version 2>/dev/null | head -1)"
