"""Exceptions raised by lazyusid.

Every error derives from :class:`LazyUSIDError` and also from the builtin
exception that callers already catch (``ValueError``, ``KeyError``, ...).
"""

from __future__ import annotations


class LazyUSIDError(Exception):
    """Base class of every lazyusid error."""


class InvalidUSIDError(LazyUSIDError, ValueError):
    """A dataset is not a valid USID main dataset.

    The message names the dataset and the missing or inconsistent piece.
    """


class DatasetSelectionError(LazyUSIDError, KeyError):
    """The requested main dataset does not exist, or none was named among several."""

    def __str__(self) -> str:  # KeyError would otherwise repr() the message
        return str(self.args[0]) if self.args else ""
