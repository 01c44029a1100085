"""The README's results section says exactly what the recorded run (docs/results-default.json) holds."""
import json
from pathlib import Path

import pytest

from mlnb.running import readme_results as R

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "docs" / "results-default.json"


@pytest.mark.unit
def test_readme_section_is_rendered_from_the_snapshot():
    snap = json.loads(SNAPSHOT.read_text())
    assert R.readme_section((ROOT / "README.md").read_text()) == R.render(snap), \
        "README results section and docs/results-default.json disagree: run python -m mlnb.running.readme_results"


@pytest.mark.unit
def test_snapshot_is_a_complete_default_run():
    snap = json.loads(SNAPSHOT.read_text())
    # the tables and claims the README quotes come from finished notebooks (an unfinished one is named
    # in the section, see the next test)
    assert snap["status"]["01_target_model"] == "ok" and snap["status"]["06_general_attacks"] == "ok", snap["status"]
    assert snap["n_general"] >= 100
    rows = {(r["strategy"], r["attack"]) for r in snap["tables"]["table4_ci"]}
    assert {("random", a) for a in ("fgs", "fg", "ml_cw", "ml_dp", "rank1", "rank2")} <= rows


@pytest.mark.unit
def test_render_reports_a_failed_notebook_and_the_markers_are_checked(tmp_path):
    snap = json.loads(SNAPSHOT.read_text())
    snap["status"] = {**snap["status"], "09_jpeg_defense": "failed"}
    assert "09_jpeg_defense did not finish" in R.render(snap)
    readme = tmp_path / "README.md"
    readme.write_text("no markers here\n")
    with pytest.raises(ValueError, match="lacks the markers"):
        R.write_section(readme, "x\n")
    readme.write_text(f"head\n{R.BEGIN}\nold\n{R.END}\ntail\n")
    R.write_section(readme, "new\n")
    assert readme.read_text() == f"head\n{R.BEGIN}\nnew\n{R.END}\ntail\n"


@pytest.mark.slow
def test_snapshot_matches_a_fresh_run():
    """After `make run`: the numbers of results/ are those of the snapshot (same code, same seed, same
    thread count: CPU results are bit-identical; the minutes may differ)."""
    results = ROOT / "results"
    if not (results / "pipeline.json").is_file():
        pytest.skip("no results/: run `make run` first")
    fresh, snap = R.collect(results), json.loads(SNAPSHOT.read_text())
    for key in ("table3", "tables", "claims", "random_case", "fig2", "fig3"):
        assert fresh[key] == snap[key], key
