"""The progress bar of a computation: a widget in a Jupyter kernel with ipywidgets, a text bar elsewhere.

``tqdm.auto`` is not used: imported in a kernel without ipywidgets (which
is no dependency of lazyusid) it warns "IProgress not found" at
``import lazyusid``. The widget's plain-text form, which a saved notebook
shows where widgets do not render, is updated when the bar closes (tqdm's
own keeps the state of its first display, e.g. 8 %).
"""

from __future__ import annotations

import functools
import os
import sys

from tqdm.std import tqdm as text_tqdm


def progress_bar(total: int, desc: str, *, disable: bool = False) -> text_tqdm:
    """A bar of ``total`` blocks, shown after a second: a widget in a notebook, text on stderr otherwise.

    Parameters
    ----------
    total : int
        Number of blocks.
    desc : str
        What is computed (the function's name).
    disable : bool, default False
        Show nothing (the bar still counts).

    Returns
    -------
    tqdm.std.tqdm
        The bar (``tqdm.notebook.tqdm``, a subclass, in a kernel where ipywidgets imports).

    Examples
    --------
    >>> with progress_bar(3, "peak", disable=True) as bar:
    ...     bar.update()
    >>> bar.n
    1
    """
    options = {"total": total, "desc": desc, "unit": "block", "delay": 1.0, "disable": disable}
    if not disable and in_kernel() and widgets_import():
        return widget_bar_class()(**options)
    # sys.stderr now, not at import: a kernel replaces it with the cell's stream
    return text_tqdm(**options, dynamic_ncols=True, file=sys.stderr)


def in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel that renders widgets (not a console, Qt console or Spyder)."""
    if "ipykernel.zmqshell" not in sys.modules or "IPython" not in sys.modules:
        return False
    if any(name == "QT_API" or name.startswith("SPYDER") for name in os.environ):
        return False
    shell = sys.modules["IPython"].get_ipython()
    kernel_shell = sys.modules["ipykernel.zmqshell"].ZMQInteractiveShell  # also Colab's and VS Code's
    name = type(shell).__name__.lower()
    return isinstance(shell, kernel_shell) and "qt" not in name and "spyder" not in name


def widgets_import() -> bool:
    """Whether ipywidgets imports (it is optional: pyUSID brings it)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def widget_bar_class() -> type:
    """``tqdm.notebook.tqdm`` whose plain-text form shows the final state (imported only in a kernel)."""
    from IPython.display import display
    from tqdm.notebook import tqdm as widget_tqdm

    class WidgetBar(widget_tqdm):
        """tqdm's notebook widget, displayed with a handle so its text can be updated at the end."""

        _handle = None

        def display(self, *args, check_delay: bool = True, **kwargs):
            if check_delay and self.delay > 0 and not self.displayed:
                self._handle = display(self.container, display_id=True)
                self.displayed = True
            return super().display(*args, check_delay=check_delay, **kwargs)

        def close(self) -> None:
            super().close()
            if self._handle is not None:  # the text a saved notebook shows without widgets
                self._handle.update(self.container)

    return WidgetBar
