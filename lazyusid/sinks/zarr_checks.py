"""What a zarr store of lazyusid must be: output names zarr can hold, and metadata lazyusid recognises.

Checked before anything is written (:func:`check_outputs`: names, and the
store's skeleton built in memory first) and before a store is resumed or
returned (:func:`metadata_problems`): lazyusid writes only into arrays whose
metadata is what it writes itself — the result's shape, dtype, dimension
names, chunks that are runs of rows, no sharding (writers sharing a shard
lose data) and no storage transformers. Anything else, including a store
whose array metadata was deleted, is never written into as it is.
"""

from __future__ import annotations

import numpy as np
import zarr

from .base import FAILED, MARKERS, ResultShape

#: zarr codecs lazyusid's stores may use (what zarr writes by default, and the usual compressors)
_KNOWN_CODECS = {"bytes", "zstd", "blosc", "gzip", "crc32c", "transpose"}


def check_names(shape: ResultShape, where: str) -> None:
    """Raise :class:`ValueError` for an output name that cannot be an array of a zarr v3 store."""
    for out in shape.outputs:
        name, why = out.name, None
        if not isinstance(name, str) or not name:
            why = "zarr names are non-empty strings"
        elif "/" in name:
            why = "it holds '/' (zarr's path separator: it would name an array in a subgroup)"
        elif "\x00" in name:
            why = "file names hold no NUL character"
        elif set(name) == {"."}:
            why = "zarr reserves '.' and '..'"
        elif name.startswith("__"):
            why = "zarr reserves names starting with '__'"
        elif len(name.encode()) > 255:
            why = "it is longer than a file name may be (255 bytes)"
        elif name == MARKERS:
            why = "the store holds the checkpoint flags under that name"
        if why is not None:
            raise ValueError(
                f"cannot store output {name!r} in {where}: {why}. Name it otherwise (the outputs= names, or "
                "the keys of the dict the function returns); nothing was written."
            )


def check_skeleton(skeleton, where: str) -> None:
    """Write the store's skeleton (``skeleton()`` → ``(dataset, encoding)``) into memory; raise what zarr refuses.

    An output zarr cannot hold (a dtype, an attribute) is named; nothing
    reaches the disk.
    """
    ds, encoding = skeleton()
    try:
        _dry_run(ds, encoding)
    except (TypeError, ValueError, KeyError, NotImplementedError) as exc:
        for name in ds.data_vars:  # which output: each alone
            try:
                _dry_run(ds[[name]], {k: v for k, v in encoding.items() if k == name})
            except (TypeError, ValueError, KeyError, NotImplementedError) as one:
                raise TypeError(
                    f"cannot store output {name!r} in {where}: zarr cannot hold it as dtype "
                    f"{ds[name].dtype} ({type(one).__name__}: {one}). Declare another dtype, e.g. "
                    f"outputs={{{name!r}: 'float64'}}; nothing was written."
                ) from one
        raise ValueError(
            f"cannot store this result in {where}: writing its metadata (in memory, before writing anything) "
            f"failed: {type(exc).__name__}: {exc}; nothing was written."
        ) from exc


def _dry_run(ds, encoding) -> None:
    store = zarr.storage.MemoryStore()
    ds.to_zarr(store, mode="w-", compute=False, zarr_format=3, consolidated=False, encoding=encoding)


def metadata_problems(group: zarr.Group, shape: ResultShape) -> list[str]:
    """What is not as lazyusid writes it in the store ``group`` of result ``shape`` (empty: all is well)."""
    problems: list[str] = []
    pos_chunks = None
    wanted = [(MARKERS, shape.pos_dims, shape.pos_shape, "uint8", ())]
    wanted += [
        (o.name, shape.loop_dims + o.dims, shape.pos_shape + shape.extra_shape + o.shape, o.dtype, o.shape)
        for o in shape.outputs
    ]
    if shape.status:
        wanted.append((FAILED, shape.loop_dims, shape.pos_shape + shape.extra_shape, "uint8", ()))
    for name, dims, full, dtype, core in wanted:
        try:
            arr = group[name]
        except KeyError:
            problems.append(f"no array metadata for {name!r} ({name}/zarr.json)")
            continue
        if not isinstance(arr, zarr.Array):
            problems.append(f"{name!r} is a group, not an array")
            continue
        meta = arr.metadata.to_dict()
        chunk_grid = meta.get("chunk_grid") or {}
        chunks = tuple((chunk_grid.get("configuration") or {}).get("chunk_shape") or ())
        codecs = {c.get("name") if isinstance(c, dict) else str(c) for c in meta.get("codecs") or ()}
        found = []
        if tuple(arr.shape) != tuple(full):
            found.append(f"shape {tuple(arr.shape)}, not {tuple(full)}")
        if str(arr.dtype) != str(np.dtype(dtype)):
            found.append(f"dtype {arr.dtype}, not {dtype}")
        if tuple(meta.get("dimension_names") or ()) != tuple(map(str, dims)):
            found.append(f"dimensions {meta.get('dimension_names')}, not {list(map(str, dims))}")
        if chunk_grid.get("name") != "regular" or len(chunks) != len(full):
            found.append(f"a chunk grid {chunk_grid.get('name')!r} lazyusid does not write")
        elif tuple(chunks[len(shape.pos_shape) :]) != shape.extra_shape + tuple(core):
            found.append(f"chunks {chunks} that split a position's values")
        elif pos_chunks is not None and tuple(chunks[: len(shape.pos_shape)]) != pos_chunks:
            found.append(f"chunks {chunks} over positions unlike those of {MARKERS}")
        if codecs - _KNOWN_CODECS:
            found.append(f"codecs {sorted(codecs - _KNOWN_CODECS)} lazyusid does not write (sharding?)")
        if meta.get("storage_transformers"):
            found.append("storage transformers")
        if found:
            problems.append(f"array {name!r} has " + ", ".join(found))
        elif name == MARKERS:
            pos_chunks = chunks
    return problems
