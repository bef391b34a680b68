"""The SLURM batch script of docs/scaling.md, run as written (resources scaled to this machine) with ``sbatch``.

On a single-node SLURM started by the test (tests/clusters.py; skipped
without root or apt-get): the script starts ``dask scheduler`` and ``srun
dask worker``, runs ``lazyusid map``, and leaves nothing running; the
stored values equal a NumPy loop of the documented function; a resubmission
prints "already computed".
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from test_cli_map import N_X, N_Y, ROOT, stored

from lazyusid import datasets

SCALING_MD = Path(ROOT) / "docs" / "scaling.md"


def documented_batch_job() -> tuple[str, str]:
    """The SLURM batch script and the ``mymodule.py`` of docs/scaling.md, as written there."""
    blocks = SCALING_MD.read_text().split("```")
    script = next(b for b in blocks if b.startswith("bash\n") and "#SBATCH" in b).removeprefix("bash\n")
    module = next(b for b in blocks if b.startswith("python\n# mymodule.py")).removeprefix("python\n")
    return script, module


def for_this_machine(script: str) -> str:
    """The script with its resources scaled to one node of 2 cores, and this venv instead of the documented one."""
    replacements = {
        "#SBATCH --nodes=2": "#SBATCH --nodes=1",
        "#SBATCH --ntasks-per-node=32": "#SBATCH --ntasks-per-node=2",
        "#SBATCH --mem=64G": "#SBATCH --mem=2G",
        'source "$HOME/venvs/lazyusid/bin/activate"': (
            f'export PATH="{Path(sys.executable).parent}:$PATH" PYTHONPATH="{ROOT}"'
        ),
    }
    for old, new in replacements.items():
        assert old in script, f"docs/scaling.md's batch script no longer has {old!r}: update this test"
        script = script.replace(old, new)
    return script


def processes_mentioning(text: str) -> dict[int, str]:
    """Running processes whose command line contains ``text`` (from ``/proc``), by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:  # ended meanwhile
                continue
            if text in cmdline:
                found[int(entry.name)] = cmdline
    return found


@pytest.fixture
def slurm(tmp_path):
    """A single-node SLURM on this machine (tests/clusters.py), as in tests/test_cluster.py."""
    import clusters

    reason = clusters.install_slurm()
    if reason is not None:
        pytest.skip(reason)
    with clusters.start_slurm(tmp_path / "slurm") as node:
        try:
            yield node
        finally:
            print(node.logs())


@pytest.mark.slurm
@pytest.mark.long
def test_the_documented_slurm_batch_script_computes_and_a_resubmission_says_already_computed(slurm, tmp_path):
    script, module = documented_batch_job()
    job = tmp_path / "job"
    job.mkdir()
    (job / "mymodule.py").write_text(module)
    (job / "peaks.sbatch").write_text(for_this_machine(script))
    datasets.make_be_pfm(job / "scan.h5", n_x=N_X, n_y=N_Y, n_freq=64)

    def submit() -> str:
        before = set(job.glob("peaks-*.log"))
        done = subprocess.run(
            ["sbatch", "--wait", "peaks.sbatch"], cwd=job, env=slurm.env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        (log,) = set(job.glob("peaks-*.log")) - before
        output = log.read_text()
        assert done.returncode == 0, f"{done.stdout}{done.stderr}\n{output}"
        left = processes_mentioning(str(job / "dask-scheduler-"))
        assert not left, f"the job left its scheduler or workers running: {left}"
        return output

    first = submit()
    assert f"computed peak_amplitude on {N_Y * N_X} positions" in first, first
    sys.path.insert(0, str(job))
    try:
        import mymodule
    finally:
        sys.path.remove(str(job))
    with h5py.File(job / "scan.h5", "r") as f:
        rows = f[datasets.MAIN_DATASET][()]
    expected = np.array([mymodule.peak_amplitude(row, [2, 4, 8, 16]) for row in rows])
    np.testing.assert_array_equal(stored(job / "scan.h5", "peak_amplitude"), expected)
    again = submit()
    assert "already computed: peak_amplitude" in again, again
