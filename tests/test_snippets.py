"""Every ```python block of README.md and docs/*.md runs as written, and shows what it computes.

Each block runs in its own process as a user runs a script (``snippet.py``
as ``__main__``, forked from a process that imported lazyusid and
matplotlib once: ``tests/zygote.py``) in an empty temporary directory
holding a small generated scan under each input name the block uses (``scan.h5``, ``be_pfm.h5``,
``lazyusid-demo/be_pfm.h5``), with matplotlib's Agg backend. A page marked
``<!-- snippets: one session -->`` (docs/api.md: "the examples run one after
the other") runs all its blocks in order as one session on the standard
input, as ``python -`` runs it. A block that cannot run on its own
(a fragment, code for a SLURM cluster) carries ``<!-- not-run: why -->`` on
the line before it; it is reported as skipped with that reason.

A block that runs must print something, and a block that plots must save
the figure: snippets that do nothing visible when run as a script are the
defect this test guards against.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from zygote import Zygote

import lazyusid

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"^<!--\s*not-run:(.*?)-->\s*$")
SESSION = "<!-- snippets: one session -->"
#: the scans the snippets open, generated small (128 columns, as the demo's, so flat indices mean the same)
INPUTS = {
    "scan.h5": {"n_x": 16, "n_y": 8},
    "be_pfm.h5": {"n_x": 128, "n_y": 4},
    "lazyusid-demo/be_pfm.h5": {"n_x": 128, "n_y": 4},
}
H5_NAME = re.compile(r"""["']([^"'\s]+\.h5)["']""")
GENERATED = re.compile(r"""make_(?:be_pfm|beps)\(\s*["']([^"']+)["']""")
SAVED = re.compile(r"""savefig\(\s*["']([^"']+)["']""")
TIMEOUT_S = 300


@dataclass(frozen=True)
class Snippet:
    """One ```python block (or one page's session of blocks) and how it runs."""

    page: Path
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # the reason, when marked
    session: bool = False

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}" + (":session" if self.session else "")


def extract(page: Path) -> list[Snippet]:
    """The ```python blocks of ``page``, each with the reason of its ``not-run`` mark (or None)."""
    lines = page.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
            mark = NOT_RUN.match(lines[i - 1].strip()) if i else None
            reason = mark.group(1).strip() if mark else None
            blocks.append(Snippet(page, i + 1, "\n".join(lines[i + 1 : end]) + "\n", reason))
            i = end
        i += 1
    return blocks


def snippets() -> list[Snippet]:
    """What runs: each block on its own, or a session page's runnable blocks joined into one."""
    out = []
    for page in PAGES:
        blocks = extract(page)
        if blocks and SESSION in page.read_text():
            runnable = [b for b in blocks if b.not_run is None]
            code = "\n".join(f"# --- {b.id}\n{b.code}" for b in runnable)
            out.append(Snippet(page, runnable[0].line, code, None, session=True))
            out.extend(b for b in blocks if b.not_run is not None)
        else:
            out.extend(blocks)
    return out


SNIPPETS = snippets()


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """The small input scans, generated once and copied into each snippet's directory."""
    where = tmp_path_factory.mktemp("scans")
    for name, size in INPUTS.items():
        path = where / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lazyusid.datasets.make_be_pfm(path, **size)
    return where


def environment() -> dict:
    """The snippets' environment: matplotlib's Agg backend, and this checkout first on the path."""
    return dict(
        os.environ,
        MPLBACKEND="Agg",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    )


@functools.cache
def zygote() -> Zygote:
    """The process the snippets are forked from, with what they import imported (once per test process)."""
    return Zygote(
        ["numpy", "xarray", "dask.array", "matplotlib.pyplot", "h5py", "lazyusid"], env=environment()
    )


def run_snippet(snippet: Snippet, where: Path) -> subprocess.CompletedProcess:
    """Run ``snippet`` in ``where`` as a user would: a script file, or a session on the standard input."""
    if snippet.session:
        run = {"stdin": snippet.code}
    else:
        (where / "snippet.py").write_text(snippet.code)
        run = {"script": "snippet.py"}
    stdout, stderr = where / "stdout.txt", where / "stderr.txt"
    child = zygote().start(run, env=environment(), cwd=where, output=stdout, errors=stderr)
    try:
        code = child.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)  # the snippet leads its own session, with any workers it started
        raise
    return subprocess.CompletedProcess(run, code, stdout.read_text(), stderr.read_text())


def test_the_pages_have_snippets_and_every_mark_says_why():
    found = {s.page.name for s in SNIPPETS}
    assert {"README.md", "api.md", "getting-started.md", "migration.md"} <= found
    for s in SNIPPETS:
        assert s.not_run is None or len(s.not_run) > 3, f"{s.id}: a not-run mark without its reason"
    # a mark on a line that is not right before a block would silently run the block (or mark nothing)
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if NOT_RUN.match(line.strip()):
                follows = lines[i + 1].strip() if i + 1 < len(lines) else ""
                assert follows == "```python", f"{page.name}:{i + 1}: a not-run mark not right before a block"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.id for s in SNIPPETS])
def test_snippet_runs_as_written(snippet, scans, tmp_path):
    if snippet.not_run is not None:
        pytest.skip(f"not run ({snippet.id}): {snippet.not_run}")
    if "import pyUSID" in snippet.code:
        pytest.importorskip("pyUSID", reason="the pyUSID original needs pyUSID (in the test extra)")
    for name in set(H5_NAME.findall(snippet.code)) - set(GENERATED.findall(snippet.code)):
        if name in INPUTS:
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(scans / name, tmp_path / name)
    proc = run_snippet(snippet, tmp_path)
    assert proc.returncode == 0, (
        f"{snippet.id} exited with {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )
    assert proc.stdout.strip(), f"{snippet.id} printed nothing: print what it shows"
    if ".plot(" in snippet.code:
        saved = SAVED.findall(snippet.code)
        assert saved, f"{snippet.id} plots but saves no figure: add plt.savefig(...)"
        for name in saved:
            png = tmp_path / name
            assert png.is_file() and png.read_bytes()[:4] == b"\x89PNG", f"{snippet.id}: {name} not written"
