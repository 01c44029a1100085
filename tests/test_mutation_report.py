"""The mutation report (``tests/mutation_report.py``) on a hand-made mutmut result folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import mutation_report as MR  # noqa: E402

pytestmark = pytest.mark.unit

SOURCE = '''
def x_f__mutmut_orig(a):
    return a + 1

def x_f__mutmut_1(a):
    return a - 1

def x_f__mutmut_2(a):
    return a + 2

def x_f__mutmut_3(a):
    return a * 1

def x_f__mutmut_4(a):
    return a
'''


def _mutants(tmp_path: Path, codes: dict) -> Path:
    root = tmp_path / "mutants" / "pkg"
    root.mkdir(parents=True)
    (root / "mod.py").write_text(SOURCE)
    (root / "mod.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    return tmp_path / "mutants"


def test_changed_line_and_equivalence_and_first_pass_survivors(tmp_path):
    codes = {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 1, "pkg.mod.x_f__mutmut_3": 0,
             "pkg.mod.x_f__mutmut_4": None}
    mutants = _mutants(tmp_path, codes)
    sources = MR.mutant_sources(mutants / "pkg" / "mod.py", "pkg.mod")
    assert MR.changed_line(sources, "pkg.mod.x_f__mutmut_3") == "return a + 1  ->  return a * 1"
    equivalents = {"pkg.mod.x_f__mutmut_3": ("return a + 1  ->  return a * 1", "same value")}
    rows, survivors, equivalent, stale, verdicts = MR.collect(mutants, equivalents)
    (module, count), = rows
    assert module == "pkg.mod" and count["killed"] == 2 and count["equivalent"] == 1 and count["not checked"] == 1
    assert [k for k, *_ in equivalent] == ["pkg.mod.x_f__mutmut_3"] and not stale
    # mutant 2 survived the sample's first run: it counts as missed although it is killed now
    sample = {"pkg.mod.x_f__mutmut_1": False, "pkg.mod.x_f__mutmut_2": True, "pkg.mod.x_f__mutmut_3": False}
    sc = MR.sample_counts(verdicts, sample)["pkg.mod"]
    assert (sc["killed"], sc["survived"], sc["equivalent"]) == (1, 1, 1)
    assert MR.ratio(sc) == 0.5


def test_stale_equivalence_is_not_subtracted(tmp_path):
    mutants = _mutants(tmp_path, {"pkg.mod.x_f__mutmut_3": 0})
    rows, survivors, equivalent, stale, _ = MR.collect(mutants, {"pkg.mod.x_f__mutmut_3": ("old line", "why")})
    assert not equivalent and stale and survivors[0][1] == "survived"


def test_lower_bound_is_clopper_pearson():
    assert MR.lower_bound(90, 90) == pytest.approx(0.05 ** (1 / 90))  # all killed: alpha^(1/n)
    assert MR.lower_bound(0, 10) == 0.0
    assert 0.85 < MR.lower_bound(95, 100) < 0.95 and MR.lower_bound(95, 100) < MR.lower_bound(99, 100)


def test_the_latest_round_is_the_estimate_and_earlier_rounds_are_history(tmp_path):
    codes = {"pkg.mod.x_f__mutmut_1": 1, "pkg.mod.x_f__mutmut_2": 1, "pkg.mod.x_f__mutmut_4": None}
    mutants = _mutants(tmp_path, codes)
    sample = tmp_path / "sample.txt"
    sample.write_text("# comment\npkg.mod.x_f__mutmut_1 || survived\n@round 2\npkg.mod.x_f__mutmut_2\n")
    rounds = MR.read_sample(sample)
    assert rounds == [{"pkg.mod.x_f__mutmut_1": True}, {"pkg.mod.x_f__mutmut_2": False}]
    estimates, history = MR.latest_rounds(MR.collect(mutants, {})[4], rounds)
    (i, c), = estimates.values()
    assert i == 2 and c["killed"] == 1 and not c["survived"]
    assert [(r, m, h["survived"]) for r, m, h in history] == [(1, "pkg.mod", 1)]


def test_exit_status_needs_a_large_enough_fully_run_sample_per_module(tmp_path, monkeypatch):
    codes = {f"pkg.mod.x_f__mutmut_{i}": 1 for i in (1, 2)} | {"pkg.mod.x_f__mutmut_3": None}
    mutants = _mutants(tmp_path, codes)
    sample = tmp_path / "sample.txt"
    sample.write_text("# comment\npkg.mod.x_f__mutmut_1\npkg.mod.x_f__mutmut_2\n")
    monkeypatch.chdir(Path(__file__).parent.parent)  # the report reads pyproject.toml's test selection
    args = ["--mutants", str(mutants), "--sample", str(sample), "--equivalent", str(tmp_path / "none.txt"),
            "--out", str(tmp_path / "M.md")]
    assert MR.main(args) == 1  # two of two killed, but a sample of 2 < MIN_SAMPLE
    assert "Estimates for the modules not checked to the end" in (tmp_path / "M.md").read_text()
    monkeypatch.setattr(MR, "MIN_SAMPLE", 2)
    assert MR.main(args) == 0
    sample.write_text("pkg.mod.x_f__mutmut_1\npkg.mod.x_f__mutmut_3\n")  # a sampled mutant not run yet
    assert MR.main(args) == 1
