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


@pytest.mark.unit
def test_markers_out_of_order_are_a_clear_error(tmp_path):
    text = f"head\n{R.END}\nold\n{R.BEGIN}\ntail\n"
    with pytest.raises(ValueError, match="before <!-- results:begin --> and none after it: put"):
        R.readme_section(text)
    readme = tmp_path / "README.md"
    readme.write_text(text)
    with pytest.raises(ValueError, match="before"):
        R.write_section(readme, "new\n")
    assert readme.read_text() == text
    # a second pair after the begin marker is fine: the first end marker after begin closes the section
    assert R.readme_section(f"{R.END}\n{R.BEGIN}\nbody\n{R.END}\n") == "body\n"


@pytest.mark.unit
@pytest.mark.parametrize("text", ["no markers here\n", f"{R.END}\nx\n{R.BEGIN}\n"])
def test_main_checks_the_readme_before_writing_the_snapshot(tmp_path, text):
    readme, snapshot = tmp_path / "README.md", tmp_path / "docs" / "snapshot.json"
    readme.write_text(text)
    snapshot.parent.mkdir()
    with pytest.raises(ValueError, match="README"):  # before reading the (missing) results folder
        R.main(["--results", str(tmp_path / "no-results"), "--snapshot", str(snapshot), "--readme", str(readme)])
    assert not snapshot.exists() and readme.read_text() == text
    with pytest.raises(FileNotFoundError, match="pass --readme"):
        R.main(["--results", str(tmp_path), "--snapshot", str(snapshot), "--readme", str(tmp_path / "nope.md")])
    assert not snapshot.exists()


@pytest.mark.unit
def test_collect_counts_a_notebook_without_seconds_as_zero(tmp_path):
    """pipeline.json may hold "seconds": null (a notebook that did not finish): no TypeError in the total."""
    def write(rel, obj):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(json.dumps(obj))

    write("pipeline.json", {"notebooks": {"01_target_model": {"status": "ok", "seconds": 90.0},
                                          "06_general_attacks": {"status": "failed", "seconds": None}}})
    table3 = dict.fromkeys(("map", "label_map", "hamming", "macro_f1", "micro_f1", "ranking_loss"), 0.5)
    write("01_target_model/metrics.json", {"metrics": table3, "environment": {"machine": "m"}})
    rows = {a: {"Hamming(A)": 0.25, "Hamming(B)": 0.0} for a in ("ml_cw", "rank2")}
    write("06_general_attacks/metrics.json", {"metrics": {"table4": {"random": rows}, "n_images": 4}})
    snap = R.collect(tmp_path)
    assert snap["minutes_total"] == 1.5 and snap["seconds"]["06_general_attacks"] is None
    assert snap["random_case"]["ml_cw"] == {"flipped_A": 0.75, "changed_B": 0.0}
