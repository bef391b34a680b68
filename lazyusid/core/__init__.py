"""The core: a function with its outputs, value checks, the block plan, identities (numpy and dask only)."""
