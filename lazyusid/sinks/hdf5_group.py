"""A USID results group in HDF5: its skeleton, and the checks that it can be built, run before any write.

:func:`build_group` writes the skeleton of a results group (one USID main
dataset per output, the checkpoint flags, the identity and parameters as
attributes) into an empty group, which the sink links into place. The skeleton
allocates all the file space the run will write into (every chunk, the
flags, the error record at its full size), so that after it is flushed no
checkpoint moves the file's end of allocation: HDF5 writes the changed
metadata before the superblock that records it, and a kill between the two
would leave metadata pointing past the end plain h5py reads
(docs/design.md, decision 6).
:func:`check_group` refuses what cannot be stored before the first byte is
written (docs/design.md, decision 9): output names HDF5, pyUSID or the group's
own datasets reserve, dtypes HDF5 cannot hold, outputs without values; and
then builds the whole skeleton in an HDF5 file held in memory (never
written to disk), so that whatever else h5py would refuse is refused there.
"""

from __future__ import annotations

import itertools
import json
import os

import h5py
import numpy as np

from ..core.identity import to_json
from ..core.outputs import Output
from ..errors import StoreConflictError
from ..usid.dimension import Dimension
from ..usid.files import UNFINISHED_GROUP, unplain_storage
from ..usid.write import ANCILLARY_NAMES, Points, bookkeeping_attrs, write_main
from .base import ERRORS, FAILED, MARKERS, ResultShape

#: attributes lazyusid writes on a results group (parameters never overwrite them)
RESERVED_ATTRS = {
    "tool",
    "num_source_dsets",
    "source_000",
    "source_file_path",
    "source_dataset_path",
    "last_pixel",
    "lazyusid_token",
    "lazyusid_identity",
    "lazyusid_format_version",
    "lazyusid_inputs",
    ERRORS,
    *bookkeeping_attrs(),
}
#: largest chunk of a result dataset
CHUNK_BYTES = 4 * 2**20
#: the group a dry run builds in memory; in files, where versions before 2026-12 built results groups
#: (a run killed meanwhile left it, and the next run removes it)
BUILDING = UNFINISHED_GROUP
#: bytes of the fixed-size :data:`~lazyusid.sinks.base.ERRORS` attribute (JSON; ``MAX_ERRORS`` errors of
#: 500-character messages fit), so that checkpoints rewrite it in place
ERRORS_BYTES = 16 * 1024
#: dry runs build their skeletons in files of these names, in memory only
_dry_runs = itertools.count()


def build_group(
    grp: h5py.Group,
    *,
    shape: ResultShape,
    tool: str,
    token: str,
    identity: dict,
    params: dict,
    positions: h5py.Dataset | None,
    source: tuple[str, str] | None,
    source_ref: h5py.Reference | None = None,
    inputs: list | None = None,
    allocate: bool = True,
) -> h5py.Group:
    """Write the skeleton of a results group into the empty group ``grp`` (an anonymous one, linked when whole).

    ``positions`` is a main dataset whose position ancillaries the outputs
    reuse (copied when it lies in another file), or None for new ones;
    ``source`` the source's ``(file, dataset)``, recorded as ``source_000``
    (``source_ref``, in the same file) or by path; ``inputs`` where the data
    and each per-position input come from
    (:func:`~lazyusid.sinks.lineage.input_records`): every input in this file
    is also an object reference ``source_001``, … (pyUSID's
    ``num_source_dsets``), and all of them are the ``lazyusid_inputs`` JSON.
    ``allocate`` (False for dry runs in memory) allocates every dataset's
    space now, written with its fill value (:func:`allocated`).
    """
    space = (lambda: {"dcpl": allocated()}) if allocate else dict  # a new property list per dataset
    pos_dims = positions if positions is not None else _pos_dims(shape)
    for out in shape.outputs:
        cols = shape.columns(out)
        rows = max(
            1, min(shape.rows_per_block, shape.n_rows, CHUNK_BYTES // max(1, cols * out.dtype.itemsize))
        )
        main = write_main(
            grp,
            None,
            name=out.name,
            quantity=out.name,
            units=out.units,
            pos_dims=pos_dims,
            spec_dims=_spec_dims(shape, out),
            dtype=out.dtype,
            ancillary_suffix=_suffix(shape, out),
            chunks=(rows, cols),
            fillvalue=out.fill,
            **space(),
        )
        pos_dims = main  # later outputs share the position ancillaries
    grp.attrs["tool"] = tool
    grp.attrs["num_source_dsets"] = 0 if source is None else 1
    if source_ref is not None:
        grp.attrs["source_000"] = source_ref
    elif source is not None:
        grp.attrs["source_file_path"], grp.attrs["source_dataset_path"] = source
    file = grp.file
    here = os.path.abspath(file.filename)
    refs = [
        file[i["dataset"]].ref
        for i in (inputs or [])[1:]
        if i.get("file") and os.path.abspath(i["file"]) == here and i.get("dataset") in file
    ]
    for k, ref in enumerate(refs, start=1):
        grp.attrs[f"source_{k:03d}"] = ref
    if refs:
        grp.attrs["num_source_dsets"] = 1 + len(refs)
    if inputs:
        grp.attrs["lazyusid_inputs"] = to_json(inputs)
    grp.attrs.update(bookkeeping_attrs())
    for key, value in params.items():
        plain = _plain(value)
        if plain is not None and key not in RESERVED_ATTRS:
            grp.attrs[key] = plain
    grp.attrs["lazyusid_identity"] = to_json(identity)
    grp.attrs["lazyusid_format_version"] = identity["format_version"]
    grp.create_dataset(MARKERS, shape=(shape.n_rows,), dtype=np.uint8, fillvalue=0, **space())
    if shape.status:  # one flag per position (row × loop positions inside it): 1 where the function raised
        rows = max(1, min(shape.rows_per_block, shape.n_rows))
        grp.create_dataset(
            FAILED,
            shape=(shape.n_rows, shape.n_extra),
            dtype=np.uint8,
            fillvalue=0,
            chunks=(rows, shape.n_extra),
            **space(),
        )
        grp.attrs.create(ERRORS, errors_text([]), dtype=f"S{ERRORS_BYTES}")
    grp.attrs["last_pixel"] = 0
    grp.attrs["lazyusid_token"] = token
    return grp


def skeleton_problems(grp: h5py.Group, shape: ResultShape) -> list[str]:
    """What a results group to resume lacks of the skeleton :func:`build_group` writes (empty: nothing)."""
    problems = []
    markers = grp.get(MARKERS)
    if not isinstance(markers, h5py.Dataset) or markers.shape != (shape.n_rows,):
        problems.append(f"no {MARKERS} of {shape.n_rows} rows")
    for out in shape.outputs:
        dset = grp.get(out.name)
        want = (shape.n_rows, shape.columns(out))
        if not isinstance(dset, h5py.Dataset) or dset.shape != want or dset.dtype != out.dtype:
            problems.append(f"no dataset {out.name!r} of shape {want} and dtype {out.dtype}")
    failed = grp.get(FAILED)
    if shape.status and (
        not isinstance(failed, h5py.Dataset) or failed.shape != (shape.n_rows, shape.n_extra)
    ):
        problems.append(f"no {FAILED} of {shape.n_rows} rows")
    return problems


def allocated() -> h5py.h5p.PropDCID:
    """Creation properties of a dataset whose space is allocated, and written with its fill value, at once.

    Every chunk then exists (and its index is complete) when the skeleton
    is flushed, and the file's end on disk covers all of them.
    """
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    return dcpl


def errors_text(errors: list[dict], limit: int = ERRORS_BYTES) -> bytes:
    """``errors`` as JSON in at most ``limit`` bytes: messages are shortened to fit, then the last dropped.

    Examples
    --------
    >>> errors_text([{"position": 3, "message": "x" * 50}], limit=40)
    b'[{"position": 3, "message": "xxxxxxxx"}]'
    """
    kept = list(errors)
    for chars in (500, 200, 80, 20, 8):
        kept = [{**e, "message": str(e.get("message", ""))[:chars]} for e in kept]
        text = json.dumps(kept).encode()
        if len(text) <= limit:
            return text
    while len(text) > limit:
        kept.pop()
        text = json.dumps(kept).encode()
    return text


def refuse_unplain(parent: h5py.Group, name: str, shape: ResultShape, path: str) -> None:
    """Raise :class:`StoreConflictError` unless every dataset lazyusid would write in group ``name`` is plain.

    The file may have been written by anyone, and a token holds no secret:
    a planted group whose outputs or flags store their bytes elsewhere
    (external storage, a virtual dataset, a link) would make a resume
    write into another file or dataset (docs/design.md, decision 8).
    """
    where = f"{parent.name.rstrip('/')}/{name}"
    why = None
    link = parent.get(name, getlink=True)
    grp = parent.get(name)
    if not isinstance(link, h5py.HardLink):
        why = f"results group {where!r} in {path} is a {type(link).__name__}, not a group of the file"
    elif os.path.realpath(grp.file.filename) != os.path.realpath(path):
        why = f"results group {where!r} lies in another file, {grp.file.filename!r}"
    else:
        for key in (*(o.name for o in shape.outputs), MARKERS):
            problem = unplain_storage(grp, key)
            if problem is not None:
                why = f"dataset '{where}/{key}' in {path} {problem}: it is not stored plainly in the file"
                break
    if why is not None:
        raise StoreConflictError(
            f"{why}. lazyusid writes results only into contiguous or chunked datasets inside the target "
            "file, so it will neither resume nor return this results group (lazyusid never writes such "
            f"a group: the file was changed by something else). Delete the group {where!r} from the file, "
            "or choose another store."
        )


def check_group(
    where: str,
    group: str,
    *,
    shape: ResultShape,
    tool: str,
    token: str,
    identity: dict,
    params: dict,
    source: tuple[str, str] | None,
    positions: h5py.Dataset | None,
) -> None:
    """Raise unless a results group of this result can be built; writes nothing to disk.

    Names and dtypes are checked one by one (the message names the output
    and the fix), then the whole skeleton is built in memory as
    :func:`build_group` builds it in the target (``positions``: the source
    main dataset whose position ancillaries the outputs reuse, or None).
    """
    check_names(shape, where)
    with _memory_file() as mem:
        for out in shape.outputs:
            _check_storable(mem, out, shape, where)
        _dry_run(mem.require_group(group), shape, tool, token, identity, params, positions, source, where)


def check_names(shape: ResultShape, where: str) -> None:
    """Raise :class:`ValueError` for an output name HDF5, pyUSID or the results group reserves."""
    taken = {MARKERS: "the checkpoint flags", FAILED: "the failure flags"}
    for out in shape.outputs:
        for name in ANCILLARY_NAMES:
            taken[name + _suffix(shape, out)] = f"an ancillary dataset of output {out.name!r}"
    for out in shape.outputs:
        name, why = out.name, None
        if not isinstance(name, str) or not name:
            why = "HDF5 names are non-empty strings"
        elif "-" in name or "/" in name:
            bad = "-" if "-" in name else "/"
            why = f"it holds {bad!r} (pyUSID reserves '-' for results groups, HDF5 '/' for paths)"
        elif "\x00" in name:
            why = "HDF5 names hold no NUL character"
        elif set(name) == {"."}:
            why = "HDF5 takes '.' for the group itself"
        elif name in taken:
            why = f"the results group holds {taken[name]} of that name"
        if why is not None:
            raise ValueError(
                f"cannot store output {name!r} in {where}: {why}. Name it otherwise (the outputs= names, or "
                "the keys of the dict the function returns); nothing was written."
            )


def _check_storable(mem: h5py.File, out: Output, shape: ResultShape, where: str) -> None:
    if shape.columns(out) == 0:
        raise ValueError(
            f"cannot store output {out.name!r} in {where}: it has shape {out.shape}, so no values per "
            "position, and a USID main dataset needs at least one; return at least one value (or store "
            "into a .zarr store); nothing was written."
        )
    try:
        mem.create_dataset(f"dtype-{out.name}", shape=(1, 1), dtype=out.dtype, fillvalue=out.fill)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot store output {out.name!r} in {where}: HDF5 cannot hold its dtype {out.dtype} ({exc}). "
            f"Declare another, e.g. outputs={{{out.name!r}: 'float64'}}, or store into a .zarr store; "
            "nothing was written."
        ) from exc


def _dry_run(parent, shape, tool, token, identity, params, positions, source, where) -> None:
    try:
        build_group(
            parent.create_group(BUILDING),
            shape=shape,
            tool=tool,
            token=token,
            identity=identity,
            params=params,
            positions=positions,
            source=source,
            allocate=False,
        )
    except (TypeError, ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ValueError(
            f"cannot store this result in {where}: building its results group (in memory, before writing "
            f"anything) failed: {type(exc).__name__}: {exc}; nothing was written."
        ) from exc


def _memory_file() -> h5py.File:
    """A new HDF5 file that lives in memory only (the core driver, no backing store)."""
    return h5py.File(f"lazyusid-dry-run-{next(_dry_runs)}.h5", "w", driver="core", backing_store=False)


def _suffix(shape: ResultShape, out: Output) -> str:
    """Ancillary datasets of several outputs in one group are told apart by the output's name."""
    return "" if len(shape.outputs) == 1 else f"_{out.name}"


def _pos_dims(shape: ResultShape) -> list[Dimension] | Points:
    """The result's positions: a grid of dimensions, or the points of a point selection (their coordinates)."""
    if len(shape.pos_dims) == 1:
        (dim,) = shape.pos_dims
        along = {
            str(k): v
            for k, v in shape.coords.items()
            if k != dim and v.dims == (dim,) and v.dtype.kind in "biuf"
        }
        if along:  # e.g. Y(pt), X(pt) of data.isel(Y=[...], X=[...]) along one new dimension "pt"
            return Points(
                tuple(along),
                tuple(str(v.attrs.get("units", "")) for v in along.values()),
                np.stack([np.asarray(v.values, dtype=np.float64) for v in along.values()], axis=1),
            )
    return [_dimension(shape, d, n) for d, n in zip(shape.pos_dims, shape.pos_shape)]


def _spec_dims(shape: ResultShape, out: Output) -> list[Dimension]:
    dims = [_dimension(shape, d, n) for d, n in zip(shape.extra_dims, shape.extra_shape)]
    dims += [Dimension(str(d), "", n) for d, n in zip(out.dims, out.shape)]
    return dims or [Dimension("Value", "", 1)]


def _dimension(shape: ResultShape, dim, size: int) -> Dimension:
    coord = shape.coords.get(dim)
    if coord is not None and coord.dims == (dim,) and coord.dtype.kind in "biuf":
        return Dimension(str(dim), str(coord.attrs.get("units", "")), np.asarray(coord.values))
    return Dimension(str(dim), "", size)


def _plain(value):
    """A parameter as pyUSID would store it as an attribute, or None when HDF5 cannot hold it.

    (The parameters are in the identity either way: the attributes are for pyUSID's tools.)
    """
    if isinstance(value, str):
        return None if "\x00" in value else value  # HDF5 strings end at a NUL
    if isinstance(value, (bool, np.bool_, int, float, complex, np.number)):
        return value
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.dtype.kind in "biufc" and arr.nbytes <= 32 * 1024:
            return arr
        if arr.dtype.kind == "U" and arr.ndim == 1 and not any("\x00" in s for s in arr):
            return np.array([s.encode() for s in arr], dtype="S")
    return None
