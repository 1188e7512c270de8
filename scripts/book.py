"""Execute the book's chapters with papermill, keep the golden notebooks, build the book.

Chapters are MyST markdown notebooks (``book/chapters/*.md``, no outputs). Each has a cell
tagged ``parameters`` with ``config = "ci"``: the small configuration that runs on a CPU in
CI. ``-p config full`` (``--config full`` here) is the real run.

Commands (run from the repository root with the project's environment):

    python scripts/book.py execute [--config ci|full] [--out DIR] [CHAPTER ...]
    python scripts/book.py goldens [CHAPTER ...]     # regenerate book/golden/*.ipynb (CI config)
    python scripts/book.py check-goldens             # goldens in sync with their sources?
    python scripts/book.py build [--executed DIR]    # stage executed chapters, jupyter-book -W

The golden notebooks are the CI-config executions, committed so that ``pytest --nbval``
re-executes them and fails on any change in a printed number. A deliberate change is
accepted by regenerating them with ``python scripts/book.py goldens``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext
import nbformat

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
CHAPTERS = BOOK / "chapters"
GOLDEN = BOOK / "golden"
BUILD = ROOT / "_build"
#: MathJax 3 from npm (package.json / package-lock.json; ``npm ci`` in scripts/setup.sh).
MATHJAX = ROOT / "node_modules" / "mathjax" / "es5"
#: What the book serves of it: the combined component that Sphinx loads (``mathjax_path`` in
#: _config.yml) and the folders it loads on demand (TeX extensions, CHTML fonts, the menu and
#: its accessibility parts); the other combined components are left out.
MATHJAX_PARTS = ("tex-mml-chtml.js", "a11y", "adaptors", "input", "output", "sre", "ui")


def chapter_sources(names: list[str] | None = None) -> list[Path]:
    """The chapters listed in _toc.yml order (all of them when ``names`` is empty)."""
    toc = (ROOT / "_toc.yml").read_text()
    listed = [line.split("file:")[1].strip() for line in toc.splitlines()
              if "file: book/chapters/" in line]
    paths = [ROOT / f"{entry}.md" for entry in listed]
    if names:
        wanted = {Path(n).stem for n in names}
        unknown = wanted - {p.stem for p in paths}
        if unknown:
            raise SystemExit(f"unknown chapter(s) {sorted(unknown)}; "
                             f"known: {[p.stem for p in paths]}")
        paths = [p for p in paths if p.stem in wanted]
    return paths


def _code_cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells
            if "injected-parameters" not in c.metadata.get("tags", [])]


def execute(chapter: Path, out: Path, config: str, timeout: int) -> Path:
    """Execute one chapter with papermill into ``out/<name>.ipynb`` (atomically)."""
    import papermill as pm

    out.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(chapter)
    params = {} if config == "ci" else {"config": config}
    target = out / f"{chapter.stem}.ipynb"
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        src = Path(tmp) / f"{chapter.stem}.src.ipynb"
        dst = Path(tmp) / f"{chapter.stem}.ipynb"
        nbformat.write(nb, src)
        pm.execute_notebook(
            str(src), str(dst), parameters=params, kernel_name="python3", cwd=str(chapter.parent),
            progress_bar=False, execution_timeout=timeout, report_mode=False,
        )
        os.replace(dst, target)
    return target


def _strip_volatile_metadata(path: Path) -> None:
    """Drop timestamps and durations so regenerated goldens only differ where outputs do."""
    nb = nbformat.read(path, as_version=4)
    nb.metadata.get("papermill", {}).pop("start_time", None)
    nb.metadata.get("papermill", {}).pop("end_time", None)
    nb.metadata.get("papermill", {}).pop("duration", None)
    nb.metadata.get("papermill", {}).pop("input_path", None)
    nb.metadata.get("papermill", {}).pop("output_path", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
    nbformat.write(nb, path)


def check_goldens() -> list[str]:
    """Problems with the goldens: missing, stale (source changed) or executed with parameters."""
    problems = []
    for chapter in chapter_sources():
        golden = GOLDEN / f"{chapter.stem}.ipynb"
        if not golden.exists():
            problems.append(f"{golden.relative_to(ROOT)} is missing")
            continue
        gnb = nbformat.read(golden, as_version=4)
        if _code_cells(gnb) != _code_cells(jupytext.read(chapter)):
            problems.append(f"{golden.relative_to(ROOT)} is out of sync with "
                            f"{chapter.relative_to(ROOT)}")
        if gnb.metadata.get("papermill", {}).get("parameters"):
            problems.append(f"{golden.relative_to(ROOT)} was executed with parameters; "
                            "goldens use the CI defaults")
    for golden in GOLDEN.glob("*.ipynb"):
        if not (CHAPTERS / f"{golden.stem}.md").exists():
            problems.append(f"{golden.relative_to(ROOT)} has no source chapter")
    return problems


def stage_mathjax(stage: Path) -> None:
    """Copy MathJax into ``stage/_mathjax/mathjax``, served as ``_static/mathjax`` by the book.

    _config.yml sets ``html_static_path: [_mathjax]`` and ``mathjax_path:
    mathjax/tex-mml-chtml.js``, so the pages load MathJax from the book itself and their
    formulas render offline (the default is a CDN). It is not in a ``_static`` folder, since
    jupyter-book adds every ``.js`` file there to every page.
    """
    if not (MATHJAX / MATHJAX_PARTS[0]).is_file():
        raise SystemExit(f"{MATHJAX / MATHJAX_PARTS[0]} not found: the book serves MathJax "
                         "from node_modules; run `bash scripts/setup.sh` (it runs `npm ci`)")
    dest = stage / "_mathjax" / "mathjax"
    dest.mkdir(parents=True)
    for part in MATHJAX_PARTS:
        if (MATHJAX / part).is_dir():
            shutil.copytree(MATHJAX / part, dest / part)
        else:
            shutil.copy2(MATHJAX / part, dest / part)


def build(executed: Path) -> None:
    """Build the HTML book from executed notebooks, with warnings as errors."""
    stage = BUILD / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(BOOK, stage / "book", ignore=shutil.ignore_patterns("golden", "_build"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, stage / name)
    stage_mathjax(stage)
    for chapter in chapter_sources():
        nb_path = executed / f"{chapter.stem}.ipynb"
        if not nb_path.exists():
            raise SystemExit(f"{nb_path} not found: run `python scripts/book.py execute` first")
        (stage / "book" / "chapters" / f"{chapter.stem}.md").unlink()
        shutil.copy2(nb_path, stage / "book" / "chapters" / nb_path.name)
    cmd = [
        str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage),
        "--path-output", str(ROOT), "-W", "-n", "--keep-going", "--all",
    ]
    subprocess.run(cmd, check=True)
    print(f"book: {BUILD / 'html' / 'index.html'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_exec = sub.add_parser("execute", help="execute chapters with papermill")
    p_exec.add_argument("chapters", nargs="*")
    p_exec.add_argument("--config", default="ci", help="value of the chapters' `config` parameter")
    p_exec.add_argument("--out", type=Path, default=None, help="default: _build/executed/<config>")
    p_exec.add_argument("--timeout", type=int, default=3600, help="seconds per cell")
    p_gold = sub.add_parser("goldens", help="regenerate the golden notebooks (CI config)")
    p_gold.add_argument("chapters", nargs="*")
    sub.add_parser("check-goldens", help="fail if a golden is missing or out of sync")
    p_build = sub.add_parser("build", help="build the HTML book from executed chapters")
    p_build.add_argument("--executed", type=Path, default=BUILD / "executed" / "ci")
    args = parser.parse_args(argv)

    if args.cmd == "execute":
        out = args.out or BUILD / "executed" / args.config
        for chapter in chapter_sources(args.chapters):
            print(f"executing {chapter.relative_to(ROOT)} (config={args.config})", flush=True)
            execute(chapter, out, args.config, args.timeout)
    elif args.cmd == "goldens":
        for chapter in chapter_sources(args.chapters):
            print(f"golden {chapter.stem}", flush=True)
            _strip_volatile_metadata(execute(chapter, GOLDEN, "ci", 3600))
    elif args.cmd == "check-goldens":
        problems = check_goldens()
        for p in problems:
            print(p)
        if problems:
            print("regenerate with: python scripts/book.py goldens")
            return 1
        print(f"goldens in sync ({len(chapter_sources())} chapters)")
    elif args.cmd == "build":
        build(args.executed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
