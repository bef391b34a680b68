"""lazyusid's benchmark suite: ratios against pyUSID and against the machine, side by side in one run.

Run ``python -m benchmarks --quick`` (about 3 minutes on 2 cores) or
``python -m benchmarks --full`` (the sizes issue 6 names); both print a
table and write ``docs/benchmarks.md``. See ``benchmarks/README.md``.
"""
