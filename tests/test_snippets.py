"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order in one namespace (a page reads as one session), in a fresh
temporary folder that holds ``model.npz`` (a copy of the shipped forecaster, GRU(50) → Dense(1) on one
feature) for the snippets that load "a model"; everything else a snippet uses it creates itself.
Markers, as a block's first line, each with its reason:

* ``# snippet: not run: <reason>``: a block that cannot run here (a cluster address, a server);
* ``# snippet: slow: <reason>``: a block that starts a cluster or trains: run by the slow test only
  (``--slow``), after the page's other blocks; no later block may depend on it.

Tracebacks point at the Markdown file's own lines.
"""
import re
import shutil
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "src" / "grurt" / "examples" / "forecaster.npz"
NOT_RUN, SLOW_BLOCK = "# snippet: not run:", "# snippet: slow:"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def pages():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def snippets(page: Path):
    """(first line number of the code, code) of each python block of a Markdown page."""
    text = page.read_text(encoding="utf-8")
    return [(text.count("\n", 0, match.start(1)) + 1, match.group(1)) for match in FENCE.finditer(text)]


def test_the_pages_have_snippets():
    assert len(snippets(ROOT / "README.md")) >= 3
    assert sum(len(snippets(page)) for page in pages()) >= 20


def run_page(page: Path, folder: Path, slow: bool) -> None:
    """Run the page's blocks in order in one namespace, in ``folder``; the slow ones only if ``slow``."""
    shutil.copy(EXAMPLE, folder / "model.npz")
    namespace = {"__name__": "__snippet__"}
    for line, code in snippets(page):
        marker = next((m for m in (NOT_RUN, SLOW_BLOCK) if code.startswith(m)), None)
        if marker:
            assert code.splitlines()[0][len(marker):].strip(), f"{page.name}:{line}: {marker} needs a reason"
        if marker == NOT_RUN or (marker == SLOW_BLOCK and not slow):
            continue
        # padded so that a traceback's line numbers are the page's
        compiled = compile("\n" * (line - 1) + code, str(page), "exec")
        failure = None
        try:
            exec(compiled, namespace)
        except Exception:  # noqa: BLE001 - report which block of which page failed, with its traceback
            failure = traceback.format_exc()
        if failure:
            pytest.fail(f"the snippet at {page.relative_to(ROOT)}:{line} failed:\n{failure}", pytrace=False)


def _id(page):
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", pages(), ids=_id)
def test_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(page, tmp_path, slow=False)


@pytest.mark.slow
@pytest.mark.parametrize("page", [page for page in pages()
                                  if any(code.startswith(SLOW_BLOCK) for _, code in snippets(page))], ids=_id)
def test_slow_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_page(page, tmp_path, slow=True)


LINK = re.compile(r"\]\(([^)\s]+)\)")


def _anchors(page: Path) -> set:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", pages(), ids=_id)
def test_links_resolve(page):
    """Every relative link of the page names a file of the repository, and a heading of it after '#'."""
    for target in LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: link to {target}: no such heading"
