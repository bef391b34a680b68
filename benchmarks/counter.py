"""Positions the counting benchmark functions computed in this process.

A module of its own: the functions reach it as a module global, which
lazyusid identifies by name (a data global would be identified by its
value, and a changing count would make every call a new computation).
"""

positions = 0


def reset() -> None:
    global positions
    positions = 0
