"""The papermill sweep recipe: a grid over one notebook on the smoke preset, collected into one table and plot."""
from __future__ import annotations

import pytest

from mlnb.running.sweep import parse_grid, resolve_notebook, run_sweep


@pytest.mark.unit
def test_parse_grid_reads_literals_never_code():
    grid = parse_grid(["MAX_RMSD=1.0,2", "ATTACKS=ml_cw,None", "FLAG=True"])
    assert grid == {"MAX_RMSD": [1.0, 2], "ATTACKS": ["ml_cw", None], "FLAG": [True]}
    assert parse_grid(["X=__import__('os').getcwd()"]) == {"X": ["__import__('os').getcwd()"]}
    with pytest.raises(ValueError, match="NAME=v1,v2"):
        parse_grid(["MAX_RMSD"])


@pytest.mark.unit
def test_unknown_notebook_lists_the_valid_ones():
    with pytest.raises(ValueError, match="06_general_attacks"):
        resolve_notebook("99_nothing")
    assert resolve_notebook("06").stem == "06_general_attacks"


def test_sweep_over_the_rmsd_bound_on_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one thread per kernel: the CPU is shared
    out = tmp_path / "sweep"
    base = {"PRESET": "smoke", "ATTACKS": "fgs,ml_cw", "N_IMAGES": 4}
    table = run_sweep("06", {"MAX_RMSD": [0.5, 2.0]}, out_dir=out, base=base, progress=False)
    assert len(table) == 2 and sorted(table["MAX_RMSD"]) == [0.5, 2.0]
    assert (table["PRESET"] == "smoke").all() and (table["notebook"] == "06_general_attacks").all()
    for bound, row in table.set_index("MAX_RMSD").iterrows():
        assert row["max_rmsd"] == bound and row["table4.random.ml_cw.RMSD"] <= bound + 1e-3
    assert (out / "sweep.csv").is_file() and (out / "sweep.png").is_file()
    executed = sorted((out / "executed").glob("*.ipynb"))
    stamps = [p.stat().st_mtime_ns for p in executed]
    again = run_sweep("06", {"MAX_RMSD": [0.5, 2.0]}, out_dir=out, base=base, progress=False)  # resumes: no rerun
    assert [p.stat().st_mtime_ns for p in executed] == stamps and again.equals(table)
