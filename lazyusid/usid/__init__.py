"""The USID format: dimensions, layout analysis, writing main datasets, files (no dask)."""
