"""Memory budget → blocks of positions: a plan you can inspect before running.

Projected memory of one block = positions per block × (input bytes + output
bytes + working bytes per position); times the blocks in flight at once.
The plan refuses a budget that cannot hold one position.
"""

from __future__ import annotations

import math
import numbers
import operator
import time
from dataclasses import dataclass

import psutil
from dask.utils import format_bytes, parse_bytes

from ..errors import BudgetError

BudgetLike = int | float | str | None

#: share of the currently available memory used when no budget is given
DEFAULT_BUDGET_SHARE = 0.25
#: keep at least this many blocks per parallel worker, for balance and progress
BLOCKS_PER_WORKER = 4
#: default blocks read at most this many input bytes: larger ones only lose time. Measured with
#: ``abs(block).max(-1)`` over a 2 GiB complex64 file, 2 threads (benchmarks/throughput.py):
#: 16 MiB blocks 0.33 s, 32 MiB 0.52 s, 280 MiB ~2x slower. glibc serves requests of 32 MiB and
#: more with fresh pages from the kernel every time (page faults), and small blocks stay in cache.
MAX_BLOCK_INPUT_BYTES = 16 * 2**20
#: default blocks of a per-spectrum function last about this long at most (estimated from the first
#: spectrum): 8 blocks of ~1.5 s for the seed peak finder on 2 workers ran at 0.91-0.96x of Pool(2),
#: the last blocks of one worker waiting alone (benchmarks/peaks.py); a task costs ~1 ms
MAX_BLOCK_SECONDS = 0.5
#: ... for functions estimated at least this slow per spectrum. One call of a fast function measures
#: its first touches of memory and code too (a ~20 us fit measured 30-200 us), and blocks cut by that
#: estimate cost more in tasks (~5 ms each on lazyusid's workers) than they compute (peers benchmark B)
SLOW_SPECTRUM_SECONDS = 1e-3


class CallTimer:
    """Times one call: its wall time less the time its thread waited for a CPU (a loaded machine).

    A one-call estimate decides where a job runs and how long its blocks
    are. On a loaded machine the call may wait for a CPU for whole time
    slices (5–20 ms each): a 10 µs function would look 1000× slower, start
    worker processes for nothing and get blocks of a few positions. Linux
    counts that wait per thread (``/proc/thread-self/schedstat``, the run
    queue delay); it is taken off. Time the call spends sleeping or waiting
    for I/O is not a wait for a CPU, and is kept. Where the count is not
    available, the wall time.

    Examples
    --------
    >>> with CallTimer() as timer:
    ...     _ = sum(range(1000))
    >>> timer.seconds < 1.0
    True
    """

    seconds: float = 0.0

    def __enter__(self) -> CallTimer:
        # each count is read between two clock readings: a wait while reading it (a system call, where
        # the thread is often preempted) is in the count and in the time taken to read it, never in the
        # call's wall time alone; it is taken off the count, not off the call (which measured 0 s)
        before = time.perf_counter()
        self._delay = _run_queue_delay()
        self._wall = time.perf_counter()
        self._reading = self._wall - before
        return self

    def __exit__(self, *exc) -> None:
        end = time.perf_counter()
        delay = _run_queue_delay()
        reading = self._reading + time.perf_counter() - end
        waited = delay - self._delay if delay is not None and self._delay is not None else 0.0
        self.seconds = max(0.0, end - self._wall - max(0.0, waited - reading))


def _run_queue_delay() -> float | None:
    """Seconds this thread has waited, runnable, for a CPU so far (None where the system does not say)."""
    try:
        with open("/proc/thread-self/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):  # pragma: no cover - not Linux
        return None


def parse_budget(budget: BudgetLike) -> int:
    """Bytes from ``"512MiB"``, ``"2 GB"``, a number of bytes, or ``None`` (the default share).

    Examples
    --------
    >>> parse_budget("512MiB")
    536870912
    """
    if budget is None:
        return int(psutil.virtual_memory().available * DEFAULT_BUDGET_SHARE)
    if isinstance(budget, str):
        try:
            if not budget.strip():  # dask's parse_bytes reads "" as 1 byte
                raise ValueError("empty")
            value = parse_bytes(budget)
        except OverflowError as exc:  # "1e400": dask reads it as float infinity
            raise ValueError(_not_finite(budget)) from exc
        except (ValueError, KeyError) as exc:
            raise ValueError(
                f"cannot read memory budget {budget!r}; write it like '512MiB' or '2GB'"
            ) from exc
    elif isinstance(budget, numbers.Real) and not isinstance(budget, bool):
        if not math.isfinite(budget):
            raise ValueError(_not_finite(budget))
        value = int(budget)
    else:
        raise TypeError(f"budget must be bytes (int) or a string like '512MiB', got {budget!r}")
    if value <= 0:
        raise ValueError(f"memory budget must be positive, got {budget!r}")
    return int(value)


def _not_finite(budget) -> str:
    return (
        f"memory budget must be a finite number of bytes, got {budget!r}; give a whole number of bytes "
        "or a string like '512MiB' or '2GB' (or None for a quarter of the available memory)"
    )


def parse_cores(cores) -> int | None:
    """The number of worker processes from ``cores``: a whole number of at least 1, or ``None`` (default).

    Floats are refused, not truncated (``cores=1.5`` would otherwise
    silently run on one core).

    Raises
    ------
    TypeError
        If ``cores`` is not an integer (``1.5``, ``2.0``, ``"2"``, ``True``).
    ValueError
        If ``cores`` is less than 1.

    Examples
    --------
    >>> parse_cores(2)
    2
    >>> parse_cores(None) is None
    True
    """
    if cores is None:
        return None
    try:
        if isinstance(cores, bool):
            raise TypeError("bool")
        value = operator.index(cores)  # int and NumPy integers; never float
    except TypeError:
        raise TypeError(
            f"cores must be a whole number of worker processes (an int), got {cores!r}; "
            "pass e.g. cores=2, or None for the default"
        ) from None
    if value < 1:
        raise ValueError(f"cores must be at least 1, got {value}; pass cores=1 to run in-process")
    return int(value)


@dataclass(frozen=True)
class BlockPlan:
    """How positions are grouped into blocks, and the memory that needs.

    A *position* here is one row of the flattened loop dimensions: one call
    of a per-spectrum function.
    """

    n_positions: int
    positions_per_block: int
    blocks_in_flight: int
    input_bytes_per_position: int
    output_bytes_per_position: int
    working_bytes_per_position: int
    budget_bytes: int
    #: where the blocks run, in words (chosen with the plan; it is what runs)
    scheduler: str = ""

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_positions / self.positions_per_block)

    @property
    def bytes_per_position(self) -> int:
        return (
            self.input_bytes_per_position + self.output_bytes_per_position + self.working_bytes_per_position
        )

    @property
    def block_bytes(self) -> int:
        return self.positions_per_block * self.bytes_per_position

    @property
    def projected_bytes(self) -> int:
        """Projected peak: blocks in flight × bytes of one block."""
        return self.blocks_in_flight * self.block_bytes

    def blocks(self) -> list[tuple[int, int]]:
        """(start, stop) of every block."""
        step = self.positions_per_block
        return [(s, min(s + step, self.n_positions)) for s in range(0, self.n_positions, step)]

    def __repr__(self) -> str:
        return (
            f"BlockPlan({self.n_blocks} blocks of {self.positions_per_block} positions "
            f"({self.n_positions} in all), {self.blocks_in_flight} in flight, "
            f"projected peak {format_bytes(self.projected_bytes)} of {format_bytes(self.budget_bytes)} budget; "
            f"per position: {format_bytes(self.input_bytes_per_position)} in, "
            f"{format_bytes(self.output_bytes_per_position)} out, "
            f"{format_bytes(self.working_bytes_per_position)} working"
            + (f"; runs on {self.scheduler})" if self.scheduler else ")")
        )


def plan_blocks(
    n_positions: int,
    input_bytes_per_position: int,
    output_bytes_per_position: int,
    *,
    budget: BudgetLike = None,
    mem_multiplier: float = 1.0,
    blocks_in_flight: int = 1,
    positions_per_block: int | None = None,
    workers: int = 1,
    seconds_per_position: float = 0.0,
) -> BlockPlan:
    """Choose positions per block so that the projected peak stays within the budget.

    Parameters
    ----------
    n_positions : int
        Number of positions (function calls) in all.
    input_bytes_per_position, output_bytes_per_position : int
        Bytes read and written per position.
    budget : int or str, optional
        Memory for the whole computation, e.g. ``"512MiB"``; default a
        quarter of the memory available now.
    mem_multiplier : float
        Working memory of the function per position, as a multiple of its
        input bytes (pyUSID's ``mem_multiplier``).
    blocks_in_flight : int
        Blocks held in memory at the same time (about the number of parallel workers).
    positions_per_block : int, optional
        Force a block size (still checked against the budget).
    seconds_per_position : float
        Estimated time of one call (per-spectrum functions): default blocks
        of a function estimated at ``SLOW_SPECTRUM_SECONDS`` or more then last
        at most ``MAX_BLOCK_SECONDS``.
    workers : int
        Parallel workers; blocks are kept small enough that each gets several
        (with one worker, only the time and bytes limits below apply).
        Without ``positions_per_block``, a block also reads at most
        ``MAX_BLOCK_INPUT_BYTES`` (16 MiB).

    Raises
    ------
    BudgetError
        If the budget cannot hold one position per block in flight.
    """
    budget_bytes = parse_budget(budget)
    if n_positions < 1:
        raise ValueError(f"nothing to compute: {n_positions} positions")
    working = math.ceil(input_bytes_per_position * mem_multiplier)
    per_position = input_bytes_per_position + output_bytes_per_position + working
    fits = budget_bytes // max(1, per_position * blocks_in_flight)
    if fits < 1:
        raise BudgetError(
            f"a memory budget of {format_bytes(budget_bytes)} cannot hold one position: each needs "
            f"{format_bytes(per_position)} ({format_bytes(input_bytes_per_position)} input + "
            f"{format_bytes(output_bytes_per_position)} output + {format_bytes(working)} working memory) "
            f"and {blocks_in_flight} blocks are in flight, so at least "
            f"{format_bytes(per_position * blocks_in_flight)}. Raise the budget, lower mem_multiplier, "
            "or use fewer cores."
        )
    if positions_per_block is not None:
        if positions_per_block < 1:
            raise ValueError(f"positions_per_block must be at least 1, got {positions_per_block!r}")
        positions_per_block = min(int(positions_per_block), n_positions)
    if positions_per_block is None:
        # several blocks per worker balance parallel workers; one worker needs no balance (its blocks
        # are bounded by time and bytes below), and every block costs a task and a write
        balanced = math.ceil(n_positions / (BLOCKS_PER_WORKER * workers)) if workers > 1 else n_positions
        largest = MAX_BLOCK_INPUT_BYTES // max(1, input_bytes_per_position)
        if seconds_per_position >= SLOW_SPECTRUM_SECONDS:  # short blocks: workers finish together
            largest = min(largest, max(1, int(MAX_BLOCK_SECONDS / seconds_per_position)))
        positions_per_block = max(1, min(fits, balanced, largest))
        # whole rounds of the workers: the last blocks keep every worker busy (15 on 2 leave one idle)
        if workers > 1:
            rounds = math.ceil(math.ceil(n_positions / positions_per_block) / workers)
            positions_per_block = max(1, math.ceil(n_positions / (rounds * workers)))
    elif positions_per_block > fits:
        raise BudgetError(
            f"{positions_per_block} positions per block need "
            f"{format_bytes(positions_per_block * per_position * blocks_in_flight)} with "
            f"{blocks_in_flight} blocks in flight, over the budget of {format_bytes(budget_bytes)}; "
            f"at most {fits} positions per block fit. Lower positions_per_block or raise the budget."
        )
    return BlockPlan(
        n_positions=int(n_positions),
        positions_per_block=int(min(positions_per_block, n_positions)),
        blocks_in_flight=int(blocks_in_flight),
        input_bytes_per_position=int(input_bytes_per_position),
        output_bytes_per_position=int(output_bytes_per_position),
        working_bytes_per_position=working,
        budget_bytes=budget_bytes,
    )
