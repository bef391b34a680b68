"""Names and attribute strings from a file never reach the terminal raw (docs/design.md, decision 8)."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

import lazyusid
from lazyusid import Dimension
from lazyusid.cli import main

#: sets the window title, rings the bell, clears the screen; a C1 CSI and DEL
EVIL = "\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\r"
#: any C0 control but the newline ending a line, DEL, any C1 control
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.fixture
def hostile(tmp_path) -> str:
    """A valid USID file whose group, dataset and dimension names and attribute strings hold escapes."""
    path = tmp_path / "hostile.h5"
    with h5py.File(path, "w") as f:
        grp = f.create_group(f"Measurement{EVIL}")
        main_dset = lazyusid.write_main(
            grp,
            np.arange(12, dtype="f4").reshape(3, 4),
            name=f"Raw{EVIL}",
            quantity=f"Q{EVIL}",
            units=f"µm{EVIL}",  # normal unicode stays as it is
            pos_dims=Dimension(f"X{EVIL}", f"m{EVIL}", 3),
            spec_dims=Dimension(f"F{EVIL}", "Hz", 4),
        )
        results = grp.create_group(f"Raw{EVIL}-Tool_000")
        results.attrs["tool"] = f"T{EVIL}"
        results.attrs["param"] = f"p{EVIL}"
        results.attrs["raw_bytes"] = f"b{EVIL}".encode()
        results.attrs[f"name{EVIL}"] = 1
        results["completed_positions"] = np.ones(3, "u1")
        results.create_dataset(f"odd{EVIL}", data=np.zeros(2))
        assert lazyusid.usid.layout.is_main(main_dset)
    return str(path)


def _assert_escaped(text: str) -> None:
    assert not CONTROL.findall(text), f"raw control characters reached the terminal: {CONTROL.findall(text)}"
    assert r"\x1b]0;pwned\x07\x1b[2J\x9b31m\x7f\r" in text  # shown, escaped


@pytest.mark.parametrize("command", [["tree"], ["info"]])
def test_tree_and_info_escape_everything_from_the_file(command, hostile, capsys):
    assert main([*command, hostile]) == 0
    out, err = capsys.readouterr()
    _assert_escaped(out + err)
    assert "µm" in out
    if command == ["info"]:
        for piece in ("Q", "µm", "X", "m", "F", "T", "param=p", "raw_bytes=b", "name"):
            assert piece + r"\x1b]0;pwned" in out, piece


def test_errors_naming_things_in_the_file_are_escaped(hostile, capsys):
    odd = f"/Measurement{EVIL}/Raw{EVIL}-Tool_000/odd{EVIL}"  # not a main dataset: the error names it
    assert main(["info", hostile, odd]) == 1
    out, err = capsys.readouterr()
    assert err.startswith("lazyusid info: error:") and err.count("\n") == 1
    _assert_escaped(out + err)


def test_printable_keeps_unicode_and_escapes_controls():
    from lazyusid.usid.files import printable

    assert printable("Y × X … µm ü 漢") == "Y × X … µm ü 漢"
    assert printable("a\nb\tc\x00\x7f\x85\x9f") == r"a\nb\tc\x00\x7f\x85\x9f"
