"""Finding and selecting main datasets in a file; the tree view; files that are not there or not HDF5."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

import lazyusid
from lazyusid import DatasetSelectionError, Dimension, InvalidUSIDError, list_main, open_usid, tree

FIRST = "/Measurement_000/Channel_000/Raw_Data"
SECOND = "/Measurement_001/Channel_000/Filtered_Data"


@pytest.fixture
def two_mains(write_usid):
    """One file, two main datasets with different names in different groups, plus a plain dataset."""
    first = write_usid(filename="two.h5")
    second = write_usid(
        [Dimension("Row", "m", 5), Dimension("Col", "m", 3)],
        [Dimension("Bias", "V", 4)],
        filename="two.h5",
        group="Measurement_001/Channel_000",
        name="Filtered_Data",
        dtype="c8",
        seed=1,
    )
    with h5py.File(first.path, "a") as f:
        f["Measurement_000"].create_dataset("Notes", data=np.arange(6).reshape(2, 3))
    assert first.dataset == FIRST and second.dataset == SECOND
    return first, second


def test_list_main_finds_both_in_file_order(two_mains):
    first, _ = two_mains
    assert list_main(first.path) == [FIRST, SECOND]
    with h5py.File(first.path) as f:
        assert list_main(f) == [FIRST, SECOND]


def test_open_without_dataset_lists_the_choices(two_mains):
    first, _ = two_mains
    with pytest.raises(
        DatasetSelectionError, match="holds 2 main datasets; choose one with dataset="
    ) as info:
        open_usid(first.path)
    assert FIRST in str(info.value) and SECOND in str(info.value)
    assert isinstance(info.value, KeyError)


@pytest.mark.parametrize("dataset", [FIRST, FIRST.lstrip("/"), "Raw_Data"])
def test_select_first_by_path_or_basename(two_mains, dataset):
    first, _ = two_mains
    arr = open_usid(first.path, dataset=dataset)
    assert arr.attrs["usid_dataset"] == FIRST
    assert arr.dims == ("Y", "X", "Frequency")
    np.testing.assert_array_equal(arr.values, first.data)


@pytest.mark.parametrize("dataset", [SECOND, "Filtered_Data"])
def test_select_second_by_path_or_basename(two_mains, dataset):
    _, second = two_mains
    arr = open_usid(second.path, dataset=dataset)
    assert arr.attrs["usid_dataset"] == SECOND
    assert arr.dims == ("Row", "Col", "Bias")
    np.testing.assert_array_equal(arr.values, second.data)


def test_unknown_dataset_lists_the_main_ones(two_mains):
    first, _ = two_mains
    with pytest.raises(
        DatasetSelectionError, match=r"dataset 'Nope' is not in the file .*\n  /Measurement_000"
    ):
        open_usid(first.path, dataset="Nope")


def test_ambiguous_basename(write_usid):
    write_usid(filename="same.h5")
    written = write_usid(filename="same.h5", group="Measurement_001/Channel_000", seed=2)
    with pytest.raises(DatasetSelectionError, match="dataset 'Raw_Data' is ambiguous"):
        open_usid(written.path, dataset="Raw_Data")
    arr = open_usid(written.path, dataset="/Measurement_001/Channel_000/Raw_Data")
    np.testing.assert_array_equal(arr.values, written.data)


def test_non_usid_dataset_named_explicitly(two_mains):
    first, _ = two_mains
    with pytest.raises(InvalidUSIDError, match=r"'/Measurement_000/Notes' in .* is not a USID main dataset"):
        open_usid(first.path, dataset="/Measurement_000/Notes")
    with pytest.raises(InvalidUSIDError, match=r"'/Measurement_001' in .* is a Group, not a dataset"):
        open_usid(first.path, dataset="/Measurement_001")


def test_missing_file(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        open_usid(missing)
    with pytest.raises(FileNotFoundError):
        list_main(missing)
    with pytest.raises(FileNotFoundError):
        tree(missing)


def test_not_an_hdf5_file(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not HDF5\n" * 10)
    with pytest.raises(OSError, match=re.escape(f"{str(path)!r} is not an HDF5 file")):
        open_usid(path)
    with pytest.raises(OSError, match="is not an HDF5 file"):
        list_main(path)


def test_file_without_main_dataset(tmp_path):
    path = tmp_path / "plain.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((4, 5)))
    assert list_main(path) == []
    with pytest.raises(DatasetSelectionError, match="holds no USID main dataset"):
        open_usid(path)


def test_a_name_that_is_not_utf8_is_named_in_the_error_not_a_type_error(two_mains):
    """HDF5 names are bytes: a group named in Latin-1 (b"Messung_\xc4") holds data lazyusid cannot address."""
    first, _ = two_mains
    with h5py.File(first.path, "a") as f:
        f.move("Measurement_001", b"Messung_\xc4")
    assert list_main(first.path) == [FIRST]  # the other main dataset is still found and opened
    assert open_usid(first.path).attrs["usid_dataset"] == FIRST
    with h5py.File(first.path, "a") as f:
        f.move("Measurement_000", b"Messung_\xd6")
    assert list_main(first.path) == []
    with pytest.raises(DatasetSelectionError) as info:
        open_usid(first.path)
    text = str(info.value)
    assert "not UTF-8 text" in text and ".move(b'/Messung_\\xc4', " in text
    assert r"'/Messung_\xd6', '/Messung_\xc4'" in text or r"'/Messung_\xc4', '/Messung_\xd6'" in text


def test_tree_shows_groups_and_main_dims(two_mains):
    first, _ = two_mains
    text = tree(first.path)
    lines = text.splitlines()
    assert lines[0] == "two.h5"
    for group in ("Measurement_000/", "Measurement_001/", "Channel_000/"):
        assert group in text
    raw = next(line for line in lines if "Raw_Data" in line)
    assert "float32 (384, 9)" in raw
    assert "USID main: Y=16 × X=24 | Frequency=9" in raw
    assert "Amplitude [V]" in raw
    filtered = next(line for line in lines if "Filtered_Data" in line)
    assert "complex64 (15, 4)" in filtered
    assert "USID main: Row=5 × Col=3 | Bias=4" in filtered
    notes = next(line for line in lines if "Notes" in line)
    assert "USID main" not in notes
    assert "Position_Indices" in text


def test_tree_of_open_file_and_incomplete_positions(write_raw_usid):
    inds = np.indices((3, 4)).reshape(2, -1).T[:-2]
    path, _ = write_raw_usid(
        np.zeros((10, 5), "f4"),
        inds,
        inds * 1.0,
        ["Y", "X"],
        ["m", "m"],
        np.arange(5)[None],
        np.arange(5.0)[None],
        ["Frequency"],
        ["Hz"],
    )
    with h5py.File(path) as f:
        text = lazyusid.tree(f)
    assert "USID main: Position=10 | Frequency=5" in text


@pytest.mark.parametrize(
    "message, busy",
    [
        (
            "Unable to synchronously open file (unable to lock file, errno = 11, error message = "
            "'Resource temporarily unavailable')",
            True,
        ),
        (
            "Unable to synchronously open file (unable to lock file, errno = 37, error message = "
            "'No locks available')",
            False,
        ),
        (
            "Unable to synchronously open file (unable to lock file, errno = 38, error message = "
            "'Function not implemented')",
            False,
        ),
        ("Unable to synchronously open file (file signature not found)", None),
    ],
)
def test_lock_errors_say_busy_or_how_to_turn_locking_off(message, busy):
    from lazyusid.errors import StoreBusyError
    from lazyusid.usid.files import raise_if_locked

    exc = OSError(message)
    if busy is None:
        raise_if_locked(exc, "busy")  # not a lock error: the caller handles it
    elif busy:
        with pytest.raises(StoreBusyError, match="busy"):
            raise_if_locked(exc, "busy")
    else:
        with pytest.raises(OSError, match="HDF5_USE_FILE_LOCKING=FALSE") as info:
            raise_if_locked(exc, "busy")
        assert not isinstance(info.value, StoreBusyError)
