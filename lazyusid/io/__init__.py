"""Reading: row readers where the work runs, lazy xarray opening, the xarray backend, fingerprints."""
