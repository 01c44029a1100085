"""The papermill sweep recipe: a grid over one notebook on the smoke preset, collected into one table and plot."""
from __future__ import annotations

import pytest

from mlnb.running.sweep import check_parameters, main, parse_grid, parse_set, resolve_notebook, run_sweep


@pytest.mark.unit
def test_parse_grid_reads_literals_never_code():
    grid = parse_grid(["MAX_RMSD=1.0,2", "ATTACKS=ml_cw,None", "FLAG=True"])
    assert grid == {"MAX_RMSD": [1.0, 2], "ATTACKS": ["ml_cw", None], "FLAG": [True]}
    assert parse_grid(["X=__import__('os').getcwd()"]) == {"X": ["__import__('os').getcwd()"]}
    with pytest.raises(ValueError, match="NAME=v1,v2"):
        parse_grid(["MAX_RMSD"])


@pytest.mark.unit
def test_commas_inside_quotes_or_brackets_stay_in_their_value():
    grid = parse_grid(["ATTACKS='ml_cw,rank1','fgs'", "QUALITIES=[10,20],[30]", "ATTACKS2=ml_cw,rank1"])
    assert grid == {"ATTACKS": ["ml_cw,rank1", "fgs"], "QUALITIES": [[10, 20], [30]], "ATTACKS2": ["ml_cw", "rank1"]}
    # --set takes the whole text as one value: a list of attacks is one string, a list literal one list
    assert parse_set(["ATTACKS=ml_cw,rank1", "QUALITIES=[10,20]", "SEED=1"]) == {
        "ATTACKS": "ml_cw,rank1", "QUALITIES": [10, 20], "SEED": 1}
    with pytest.raises(ValueError, match="NAME=value"):
        parse_set(["SEED"])


@pytest.mark.unit
def test_a_misspelled_parameter_is_refused_before_any_run(tmp_path):
    """papermill only warns about an unknown parameter and runs the notebook with its defaults."""
    notebook = resolve_notebook("06")
    check_parameters(notebook, {"PRESET": "smoke", "MAX_RMSD": [1.0]})
    with pytest.raises(ValueError, match="no parameter 'SEEED'.*MAX_RMSD.*SEED"):
        run_sweep("06", {"SEEED": [0, 1]}, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="no parameter 'PRESTE'"):
        main(["--notebook", "06", "--grid", "SEED=0", "--set", "PRESTE=smoke", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


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
