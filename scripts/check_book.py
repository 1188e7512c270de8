"""Open the built book in headless Chromium and check what a reader sees.

    python scripts/check_book.py [--html _build/html] [--screenshots DIR] [PAGE ...]

Each page (default: every page in _toc.yml) is loaded from ``file://``, as a reader who opens
``_build/html/index.html`` without a network would, and checked for:

- **formulas**: MathJax loaded, every ``.math`` element of the page typeset (it holds an
  ``mjx-container``), at least as many typeset as the page's HTML has math elements, no TeX
  error (``mjx-merror``), and no raw ``\\[``, ``\\(``, ``\\begin{`` or ``$$`` left in the visible
  text (code cells' sources excepted);
- **requests**: none to another host (every request is ``file:`` or ``data:``), and no local
  file that failed to load; the browser resolves every host name to nothing, so a page that
  does ask for a URL never reaches the network;
- **script errors**: no uncaught JavaScript exception;
- **tables**: results printed as monospace text (``print(df.to_string())``) rather than shown as
  HTML ``<table>`` elements are listed (``text_tables``).

Chromium (Debian's ``chromium``, installed by scripts/setup.sh) is driven through the DevTools
protocol over a pipe (``--remote-debugging-pipe``): no port, no extra package.
tests/book/test_rendered_book.py runs these checks on the built book.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import re
import select
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"

#: As the machines' notes give them for headless Chromium as root on a closed network, plus a
#: resolver that maps every host to nothing (a page asking for a URL never leaves the machine).
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND",
)
#: Raw TeX that MathJax would have replaced.
RAW_TEX = ("\\[", "\\(", "\\begin{", "$$")
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")

#: Run in the page once it has loaded: waits for MathJax to finish typesetting, then collects
#: what the checks need. The code cells' sources are hidden while the visible text is read.
INSPECT_JS = r"""
(async () => {
  const mj = window.MathJax;
  let mathjax = null;
  if (mj && mj.startup && mj.startup.promise) {
    const timeout = new Promise(resolve => setTimeout(() => resolve("timeout"), 20000));
    const done = await Promise.race([mj.startup.promise.then(() => "done"), timeout]);
    mathjax = done === "done" ? (mj.version || "loaded") : "timed out";
  }
  const math = Array.from(document.querySelectorAll(".math"));
  const untypeset = math.filter(e => !e.querySelector("mjx-container"))
                        .map(e => e.textContent.trim().slice(0, 100));
  const errors = Array.from(document.querySelectorAll("mjx-merror"))
                      .map(e => (e.getAttribute("data-mjx-error") || e.textContent).slice(0, 100));
  const main = document.querySelector("main") || document.body;
  const inputs = Array.from(main.querySelectorAll(".cell_input"));
  const shown = inputs.map(e => e.style.display);
  inputs.forEach(e => { e.style.display = "none"; });
  const text = main.innerText;
  inputs.forEach((e, i) => { e.style.display = shown[i]; });
  return {
    mathjax: mathjax,
    math: math.length,
    typeset: math.length - untypeset.length,
    containers: document.querySelectorAll("mjx-container").length,
    untypeset: untypeset,
    errors: errors,
    text: text,
    tables: document.querySelectorAll(".cell_output table").length,
    pre: Array.from(document.querySelectorAll(".cell_output pre")).map(p => p.textContent),
  };
})()
"""


def find_chromium() -> str | None:
    """Path of Debian's Chromium (``chromium``), or None when it is not installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """Headless Chromium driven through the DevTools protocol over ``--remote-debugging-pipe``.

    Chromium reads commands from its fd 3 and writes replies and events to its fd 4, each
    message a JSON object ended by a NUL byte.
    """

    def __init__(self, binary: str | None = None, timeout: float = 60.0) -> None:
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("chromium not found: `apt-get install chromium` "
                                    "(bash scripts/setup.sh installs it)")
        self.timeout = timeout
        self.profile = tempfile.mkdtemp(prefix="mltm-chromium-")
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Copies above 3 and 4, so that dup2 onto 3 and 4 in the child always makes new,
        # inheritable descriptors.
        child_in = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def pipes_on_3_and_4() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.proc = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
             "--remote-debugging-pipe", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=pipes_on_3_and_4, close_fds=False,
        )
        os.close(child_in)
        os.close(child_out)
        self._w, self._r = to_chrome_w, from_chrome_r
        self._buf = b""
        self._id = 0
        self.events: list[dict] = []
        self.version = self.call("Browser.getVersion")["product"]

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            ready = select.select([self._r], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                raise TimeoutError(f"no answer from Chromium in {self.timeout:.0f} s")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium closed its DevTools pipe (exit code "
                                   f"{self.proc.poll()})")
            self._buf += chunk
        message, _, self._buf = self._buf.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        data = json.dumps(message).encode() + b"\0"
        while data:
            data = data[os.write(self._w, data):]
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float | None = None) -> dict:
        """Wait for the event ``method`` of ``session`` (one that already came counts)."""
        deadline = time.monotonic() + (timeout or self.timeout)
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event.get("method") == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            self.events.append(self._read(deadline))

    def close(self) -> None:
        """Close the browser and remove its profile."""
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._w, self._r):
            os.close(fd)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class PageReport:
    """What a reader's browser showed of one page, and what is wrong with it."""

    url: str
    source_math: int  # math elements in the page's HTML, before any script ran
    mathjax: str | None  # MathJax version once it finished, None when it never loaded
    math: int  # math elements in the page after scripts ran
    typeset: int  # of those, how many MathJax typeset
    untypeset: list[str] = field(default_factory=list)
    tex_errors: list[str] = field(default_factory=list)
    raw_tex: list[str] = field(default_factory=list)  # visible-text excerpts with raw TeX
    external: list[str] = field(default_factory=list)  # requests to another host
    failed: list[str] = field(default_factory=list)  # local files that failed to load
    exceptions: list[str] = field(default_factory=list)
    html_tables: int = 0
    text_tables: list[str] = field(default_factory=list)  # first lines of printed tables

    def formula_problems(self) -> list[str]:
        """Every way in which the page's formulas are not typeset."""
        problems = []
        if self.source_math and self.mathjax is None:
            problems.append(f"MathJax did not load, {self.source_math} formula(s) shown as "
                            "raw TeX")
        elif self.mathjax == "timed out":
            problems.append("MathJax did not finish typesetting in 20 s")
        if self.untypeset:
            problems.append(f"{len(self.untypeset)} of {self.math} formula(s) not typeset, "
                            f"first: {self.untypeset[0]!r}")
        if self.typeset < self.source_math:
            problems.append(f"{self.typeset} formula(s) typeset, the page's HTML has "
                            f"{self.source_math}")
        if self.tex_errors:
            problems.append(f"{len(self.tex_errors)} TeX error(s), first: "
                            f"{self.tex_errors[0]!r}")
        if self.raw_tex:
            problems.append(f"raw TeX in the visible text: {self.raw_tex[:3]}")
        return problems

    def request_problems(self) -> list[str]:
        """Requests to other hosts, local files that did not load, script errors."""
        problems = [f"request to another host: {u}" for u in self.external]
        problems += [f"failed to load: {u}" for u in self.failed]
        problems += [f"script error: {e}" for e in self.exceptions]
        return problems


def source_math_count(html: str) -> int:
    """Math elements (``class="math ..."``) in a page's HTML as written by Sphinx."""
    return len(re.findall(r"""<(?:span|div)\b[^>]*\bclass=["'](?:[^"']*\s)?math[\s"']""", html))


def raw_tex_excerpts(text: str) -> list[str]:
    """Excerpts of ``text`` around each raw TeX delimiter (``RAW_TEX``)."""
    found = []
    for token in RAW_TEX:
        start = 0
        while (i := text.find(token, start)) >= 0:
            found.append(text[max(0, i - 30):i + 50].replace("\n", " "))
            start = i + len(token)
    return found


_GAP = re.compile(r"(?<=\S) {2,}(?=\S)")


def text_tables(text: str, min_rows: int = 3) -> list[str]:
    """First lines of the tables printed as text in ``text`` (``df.to_string()`` and the like).

    A printed table is a run of at least ``min_rows`` consecutive lines, each with a gap of two
    or more spaces between words, and some column blank in every line of the run (its columns
    line up).
    """
    tables = []
    run: list[set[int]] = []
    first = ""
    for line in [*text.splitlines(), ""]:
        gaps = {i for m in _GAP.finditer(line) for i in range(m.start(), m.end())}
        if gaps and (not run or set.intersection(*run, gaps)):
            first = first if run else line.strip()
            run.append(gaps)
            continue
        if len(run) >= min_rows:
            tables.append(first)
        run, first = ([gaps], line.strip()) if gaps else ([], "")
    return tables


def check_page(browser: Chromium, page: Path, screenshot: Path | None = None,
               width: int = 1280, max_height: int = 6000) -> PageReport:
    """Load ``page`` from ``file://`` in a new tab, wait for MathJax, and report."""
    url = page.resolve().as_uri()
    target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.call("Target.attachToTarget",
                           {"targetId": target, "flatten": True})["sessionId"]
    try:
        for domain in ("Page", "Network", "Runtime"):
            browser.call(f"{domain}.enable", session=session)
        browser.call("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False},
                     session=session)
        first_event = len(browser.events)
        browser.call("Page.navigate", {"url": url}, session=session)
        browser.wait_for("Page.loadEventFired", session)
        found = browser.call("Runtime.evaluate",
                             {"expression": INSPECT_JS, "awaitPromise": True,
                              "returnByValue": True}, session=session, timeout=90)
        if "exceptionDetails" in found:
            raise RuntimeError(f"inspecting {url} failed: {found['exceptionDetails']}")
        seen = found["result"]["value"]
        if screenshot is not None:
            size = browser.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            shot = browser.call("Page.captureScreenshot", {
                "format": "png", "captureBeyondViewport": True,
                "clip": {"x": 0, "y": 0, "width": width,
                         "height": min(size["height"], max_height), "scale": 1},
            }, session=session)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = [e for e in browser.events[first_event:] if e.get("sessionId") == session]
    finally:
        browser.call("Target.closeTarget", {"targetId": target})

    requests, external, failed, exceptions = {}, [], [], []
    for event in events:
        params = event.get("params", {})
        if event["method"] == "Network.requestWillBeSent":
            requests[params["requestId"]] = params["request"]["url"]
            if not params["request"]["url"].startswith(LOCAL_SCHEMES):
                external.append(params["request"]["url"])
        elif event["method"] == "Network.loadingFailed":
            failed_url = requests.get(params["requestId"], params["requestId"])
            if failed_url.startswith(LOCAL_SCHEMES):
                failed.append(f"{failed_url} ({params.get('errorText')})")
        elif event["method"] == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            exceptions.append(details.get("exception", {}).get("description")
                              or details.get("text", "?"))
    tables = [first for text in seen["pre"] for first in text_tables(text)]
    return PageReport(
        url=url, source_math=source_math_count(page.read_text(encoding="utf-8")),
        mathjax=seen["mathjax"], math=seen["math"], typeset=seen["typeset"],
        untypeset=seen["untypeset"], tex_errors=seen["errors"],
        raw_tex=raw_tex_excerpts(seen["text"]), external=sorted(set(external)), failed=failed,
        exceptions=exceptions, html_tables=seen["tables"], text_tables=tables,
    )


def book_pages(html: Path = HTML) -> list[Path]:
    """The built HTML page of every entry of _toc.yml (root first), in order."""
    entries = []
    for line in (ROOT / "_toc.yml").read_text().splitlines():
        key, _, value = line.strip().lstrip("- ").partition(":")
        if key in ("root", "file"):
            entries.append(value.strip())
    return [html / f"{entry}.html" for entry in entries]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pages", nargs="*", type=Path, help="default: every page in _toc.yml")
    parser.add_argument("--html", type=Path, default=HTML, help="the built book")
    parser.add_argument("--screenshots", type=Path, help="save a PNG of each page here")
    args = parser.parse_args(argv)
    # A page is a path, or a path inside the built book (book/chapters/data.html).
    pages = [p if p.is_file() or not (args.html / p).is_file() else args.html / p
             for p in args.pages] or book_pages(args.html)
    missing = [p for p in pages if not p.is_file()]
    if missing:
        print(f"not built: {[str(p) for p in missing]}; run "
              "`python scripts/book.py build --executed book/golden`")
        return 2
    bad = 0
    with Chromium() as browser:
        print(browser.version)
        for page in pages:
            shot = args.screenshots / f"{page.stem}.png" if args.screenshots else None
            t0 = time.perf_counter()
            report = check_page(browser, page, shot)
            problems = report.formula_problems() + report.request_problems()
            bad += bool(problems)
            print(f"{page.relative_to(args.html) if page.is_relative_to(args.html) else page}: "
                  f"{report.typeset}/{report.source_math} formulas typeset "
                  f"(MathJax {report.mathjax}), {report.html_tables} HTML tables, "
                  f"{len(report.text_tables)} printed as text, "
                  f"{time.perf_counter() - t0:.1f} s")
            for problem in problems:
                print(f"  {problem}")
            if shot:
                print(f"  screenshot: {shot}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
