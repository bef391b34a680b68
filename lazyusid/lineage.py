"""``lazyusid.lineage``: the computations behind a stored result (the stores are imported only when asked)."""

from __future__ import annotations


def lineage(result) -> list[dict]:
    """The chain of computations behind a stored result, newest first.

    Parameters
    ----------
    result : xarray.DataArray or xarray.Dataset, or str
        A stored result (what :func:`~lazyusid.map_spectra` returns with
        ``store=``, or an output opened with :func:`~lazyusid.open_usid`), or
        its location ``"file.h5:/group/Raw-tool_000"`` or a zarr store path.

    Returns
    -------
    list of dict
        One per computation: ``store``, ``tool``, ``token`` and ``inputs``
        (each with ``name``, ``file`` and ``dataset`` or ``store``, and the
        ``token`` of an input that is itself a stored result), followed by
        the computations of those inputs.

    Examples
    --------
    >>> fit = data.usid.map(sho_fit, params={"guess": guess}, store="scan.h5")   # doctest: +SKIP
    >>> [step["tool"] for step in lazyusid.lineage(fit)]                            # doctest: +SKIP
    ['sho_fit', 'sho_guess']
    """
    from .sinks.lineage import follow

    return follow(result)
