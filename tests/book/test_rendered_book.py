"""The built book as a reader sees it: every page opened from file:// in headless Chromium.

scripts/test.sh builds the book (``scripts/book.py build --executed book/golden``) before
pytest; elsewhere a missing build is built here (about 15 s), except under
``MLTM_REQUIRE_DATA=1``, where it is an error. Chromium is Debian's ``chromium``, installed by
scripts/setup.sh. ``MLTM_BOOK_SCREENSHOTS=DIR`` saves a PNG of each page there.

The checks themselves are in scripts/check_book.py; the last tests here feed them crafted
pages (MathJax removed, MathJax from a CDN, a TeX error, tables printed as text) and show that
each fault is reported.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts.check_book import (
    HTML,
    Chromium,
    book_pages,
    check_page,
    find_chromium,
    raw_tex_excerpts,
    text_tables,
)
from tests._assets import REPO, missing

PAGES = book_pages(HTML)
MATHJAX = HTML / "_static" / "mathjax" / "tex-mml-chtml.js"
#: Chapters that still print their result tables with ``print(df.to_string())``; none since
#: issue 13 (every chapter displays its tables as DataFrames). Strict: a page listed here whose
#: tables are HTML fails until it is taken off the list.
TEXT_TABLES_TODO: set[str] = set()


def page_id(page: Path) -> str:
    return page.stem


@pytest.fixture(scope="module")
def book() -> Path:
    """The built book, built here when absent (an error under MLTM_REQUIRE_DATA=1)."""
    absent = [p for p in [*PAGES, MATHJAX] if not p.is_file()]
    if absent:
        if os.environ.get("MLTM_REQUIRE_DATA") == "1":
            listed = ", ".join(str(p.relative_to(REPO)) for p in absent[:3])
            pytest.fail(f"the built book lacks {listed}{' and more' if absent[3:] else ''}: "
                        "scripts/test.sh builds it before pytest with `python scripts/book.py "
                        "build --executed book/golden` (MLTM_REQUIRE_DATA=1, so a missing "
                        "build is an error)")
        if not (REPO / "node_modules" / "mathjax").is_dir():
            missing("MathJax is not installed (node_modules/mathjax): run `bash scripts/setup.sh`")
        subprocess.run([sys.executable, "scripts/book.py", "build", "--executed", "book/golden"],
                       cwd=REPO, check=True, capture_output=True)
    return HTML


@pytest.fixture(scope="module")
def browser():
    if find_chromium() is None:
        missing("chromium is not installed: run `bash scripts/setup.sh` (apt-get install "
                "chromium)")
    with Chromium() as chromium:
        yield chromium


@pytest.fixture(scope="module")
def reports(book, browser):
    """Each page's report, made once (one Chromium tab per page)."""
    shots = os.environ.get("MLTM_BOOK_SCREENSHOTS")
    done = {}

    def report(page: Path):
        if page not in done:
            shot = Path(shots) / f"{page.stem}.png" if shots else None
            done[page] = check_page(browser, page, screenshot=shot)
        return done[page]

    return report


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_formulas_are_typeset(reports, page):
    report = reports(page)
    problems = report.formula_problems()
    assert not problems, f"{page.name}:\n  " + "\n  ".join(problems)
    if report.source_math:
        assert report.mathjax.startswith("3."), report.mathjax


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_nothing_is_fetched_from_another_host(book, reports, page):
    # MathJax is served by the book itself (_config.yml: mathjax_path, html_static_path).
    html = page.read_text(encoding="utf-8")
    for src in re.findall(r"""<script\b[^>]*\bsrc=["']([^"']+)["']""", html):
        assert "://" not in src and not src.startswith("//"), f"{page.name} loads {src}"
        assert (page.parent / src.split("?")[0]).resolve().is_file(), f"{page.name}: {src}"
    report = reports(page)
    problems = report.request_problems()
    assert not problems, f"{page.name}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page", [
    pytest.param(p, marks=pytest.mark.xfail(
        strict=True, reason="prints its result tables with df.to_string() (issue 13)"))
    if p.stem in TEXT_TABLES_TODO else p
    for p in PAGES], ids=page_id)
def test_result_tables_are_html_tables(reports, page):
    report = reports(page)
    assert not report.text_tables, (f"{page.name} prints {len(report.text_tables)} table(s) as "
                                    f"text, first lines: {report.text_tables[:3]}")


# The checker on crafted pages: each fault is reported.

def crafted(tmp_path: Path, like: Path, edit) -> Path:
    """A copy of the built page ``like`` changed by ``edit``, its links still resolving."""
    html = like.read_text(encoding="utf-8")
    html = html.replace("<head>", f'<head><base href="{like.resolve().as_uri()}">', 1)
    out = tmp_path / f"crafted-{like.name}"
    out.write_text(edit(html), encoding="utf-8")
    return out


def _chapter_with_math(book: Path) -> Path:
    return book / "book" / "chapters" / "ot_sinkhorn.html"


def test_checker_reports_a_page_without_mathjax(book, browser, tmp_path):
    page = crafted(tmp_path, _chapter_with_math(book),
                   lambda h: re.sub(r"<script[^>]*mathjax/tex-mml-chtml\.js[^>]*></script>", "",
                                    h))
    report = check_page(browser, page)
    problems = report.formula_problems()
    assert report.source_math > 10 and report.mathjax is None and report.typeset == 0
    assert problems[0] == (f"MathJax did not load, {report.source_math} formula(s) shown as "
                           "raw TeX")
    assert any(p.startswith("raw TeX in the visible text") for p in problems)
    assert any("\\[" in excerpt for excerpt in report.raw_tex)
    assert any("\\(" in excerpt for excerpt in report.raw_tex)


def test_checker_reports_mathjax_from_a_cdn(book, browser, tmp_path):
    cdn = "https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"
    page = crafted(tmp_path, _chapter_with_math(book),
                   lambda h: re.sub(r'src="[^"]*mathjax/tex-mml-chtml\.js[^"]*"', f'src="{cdn}"',
                                    h))
    report = check_page(browser, page)
    assert report.external == [cdn]  # asked for, never reached: every host resolves to nothing
    assert f"request to another host: {cdn}" in report.request_problems()
    assert report.formula_problems()


def test_checker_reports_a_tex_error(book, browser, tmp_path):
    page = crafted(tmp_path, book / "book" / "running.html",
                   lambda h: re.sub(r'(<span class="math notranslate nohighlight">)[^<]*',
                                    r"\1\\(\\frac{a}\\)", h, count=1))
    report = check_page(browser, page)
    assert report.tex_errors and "frac" in report.tex_errors[0]
    assert any("TeX error" in p for p in report.formula_problems())


def test_checker_reports_a_missing_local_file(book, browser, tmp_path):
    page = crafted(tmp_path, book / "book" / "running.html",
                   lambda h: h.replace("</body>", '<img src="no-such-figure.png"></body>'))
    report = check_page(browser, page)
    assert any("no-such-figure.png" in p for p in report.request_problems())


def test_text_tables_finds_printed_dataframes():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"loss": ["m-LTM", "triplet", "NT-Xent"], "R@1": [12.3, 4.5, 10.0],
                       "R@10": [50.1, 33.0, 48.2]})
    for text in (df.to_string(), df.to_string(index=False),
                 "results\n" + df.round(1).to_string() + "\n\ndone"):
        assert len(text_tables(text)) == 1, text
    assert text_tables(pd.Series([1.5, 2.25, 3.0], index=["a", "bb", "ccc"]).to_string())
    prose = ("debsfx-ci: encoder outputs ready in 6.0 s\ninstruments-ci: encoder outputs "
             "ready in 0.7 s\nbest epoch 3 of 4")
    assert text_tables(prose) == []


def test_raw_tex_excerpts():
    assert raw_tex_excerpts("a formula \\[x^2\\] and $$y$$ and \\begin{align}") != []
    assert raw_tex_excerpts("a typeset formula: x² and a price of $5") == []


MATH_SYNTAXES = r"""# Math syntaxes

Inline dollars $\pi^\top 1_n = b$, and display dollars with a label:

$$
\min_{\pi \in \Pi(a, b)} \langle \pi, C \rangle
$$ (eq-ot)

An amsmath environment:

\begin{align}
f(x) &= x^2 \\
g(x) &= \log x
\end{align}

```{math}
:label: eq-kl
\operatorname{KL}(\pi \,\|\, a b^\top)
```

The role {math}`\varepsilon > 0`, and references to {eq}`eq-ot` and {eq}`eq-kl`.
"""


@pytest.mark.slow
def test_the_books_config_typesets_every_math_syntax(browser, tmp_path):
    # The chapters use $...$, $$...$$ and {math}`...` today; a book built with the same
    # _config.yml (and the same MathJax) also typesets amsmath environments and labelled
    # {math} blocks, and numbers the labelled equations and the
    # amsmath environment.
    if not (REPO / "node_modules" / "mathjax").is_dir():
        missing("MathJax is not installed (node_modules/mathjax): run `bash scripts/setup.sh`")
    from scripts.book import stage_mathjax

    stage = tmp_path / "stage"
    (stage / "book").mkdir(parents=True)
    (stage / "_config.yml").write_text((REPO / "_config.yml").read_text())
    (stage / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (stage / "book" / "references.bib").write_text((REPO / "book/references.bib").read_text())
    (stage / "book" / "intro.md").write_text(MATH_SYNTAXES)
    (stage / "book" / "_ext").mkdir()
    (stage / "book" / "_ext" / "dedupe_scripts.py").write_text(
        (REPO / "book" / "_ext" / "dedupe_scripts.py").read_text())
    stage_mathjax(stage)
    jb = Path(sys.executable).parent / "jupyter-book"
    built = subprocess.run([str(jb), "build", str(stage), "--path-output", str(tmp_path), "-W",
                            "-n", "--keep-going"], capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    page = tmp_path / "_build" / "html" / "book" / "intro.html"
    shots = os.environ.get("MLTM_BOOK_SCREENSHOTS")
    report = check_page(browser, page, screenshot=Path(shots) / "math-syntaxes.png" if shots
                        else None, max_height=1200)
    assert report.source_math == 5 and report.typeset == 5, report
    assert not report.formula_problems() and not report.request_problems(), report
    numbers = re.findall(r'<span class="eqno">\((\d+)\)', page.read_text())
    assert numbers == ["1", "2", "3"], numbers  # eq-ot, the align environment, eq-kl
