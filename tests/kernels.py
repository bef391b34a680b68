"""Execute notebooks in a real Jupyter kernel (nbclient + ipykernel), optionally with ipywidgets hidden.

The kernel imports this worktree's ``lazyusid`` (``PYTHONPATH``). With
``hide_ipywidgets``, an IPython startup file (in a private ``IPYTHONDIR``)
puts a ``sys.meta_path`` finder before all others that refuses to import
``ipywidgets``, as in an environment where it is not installed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 300

_HIDE_IPYWIDGETS = '''
import sys


class HideIpywidgets:
    """Import ipywidgets as if it were not installed."""

    def find_spec(self, name, path=None, target=None):
        if name == "ipywidgets" or name.startswith("ipywidgets."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
        return None


sys.meta_path.insert(0, HideIpywidgets())
'''


def execute(nb: nbformat.NotebookNode, cwd: Path, *, hide_ipywidgets: bool = False) -> nbformat.NotebookNode:
    """Run every cell of ``nb`` in a fresh kernel started in ``cwd``; return ``nb`` with its outputs."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.pop("MPLBACKEND", None)  # the kernel's inline backend
    if hide_ipywidgets:
        startup = cwd / ".ipython" / "profile_default" / "startup"
        startup.mkdir(parents=True, exist_ok=True)
        (startup / "00-hide-ipywidgets.py").write_text(_HIDE_IPYWIDGETS)
        env["IPYTHONDIR"] = str(cwd / ".ipython")
    client = NotebookClient(
        nb, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    )
    client.execute(env=env)
    return nb


def stream(cell: nbformat.NotebookNode, name: str) -> str:
    """All the text ``cell`` wrote to ``name`` ("stdout" or "stderr")."""
    return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == name)


def percentages(text: str) -> list[int]:
    """The percentages a tqdm bar showed in ``text``, in order."""
    return [int(p) for p in re.findall(r"(\d+)%\|", text)]
