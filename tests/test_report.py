"""Unit tests of mlnb.running.report.write_index: every file linked, names escaped, titles and descriptions."""
import html
import json
import re
from urllib.parse import unquote

import pytest

from mlnb.running.report import write_index

pytestmark = pytest.mark.unit


def _notebook(path, title):
    nb = {"cells": [{"cell_type": "code", "source": "x = 1", "metadata": {}, "outputs": []},
                    {"cell_type": "markdown", "source": [f"# {title}\n", "\n", "more text"], "metadata": {}}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    (root / "html").mkdir(parents=True)
    (root / "html" / "08_case_study.html").write_text("<html></html>")
    (root / "html" / "09_jpeg_defense.html").write_text("<html></html>")
    _notebook(root / "executed" / "08_case_study.ipynb", "08 · Case study <Fig. 2>")
    _notebook(root / "executed" / "09_jpeg_defense.ipynb", "09 · JPEG & friends")
    for rel in ("08_case_study/fig2.png", "08_case_study/metrics.json", "09_jpeg_defense/fig3.png",
                "09_jpeg_defense/quality_sweep.csv", "09_jpeg_defense/a <b>&'\"odd\".csv",
                "11_orphan/table.csv", "misc/extra.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"data")
    (root / "08_case_study" / "notes.txt").write_text("not listed")
    (root / "pipeline.json").write_text(json.dumps({"notebooks": {"08_case_study": {"status": "ok", "seconds": 12.34}}}))
    return root


def _hrefs(text):
    return [unquote(html.unescape(h)) for h in re.findall(r'href="([^"]+)"', text)]


def test_links_every_file_and_notebook(results):
    out = write_index(results, results / "html")
    assert out == results / "index.html"
    text = out.read_text()
    hrefs = set(_hrefs(text))
    expected = {"html/08_case_study.html", "html/09_jpeg_defense.html", "08_case_study/fig2.png",
                "08_case_study/metrics.json", "09_jpeg_defense/fig3.png", "09_jpeg_defense/quality_sweep.csv",
                "09_jpeg_defense/a <b>&'\"odd\".csv", "11_orphan/table.csv", "misc/extra.png"}
    assert expected <= hrefs
    assert all((results / h).is_file() for h in hrefs)
    assert "notes.txt" not in text
    assert "executed/" not in " ".join(hrefs)
    assert "ran in 12.3 s" in text


def test_escapes_names_and_titles(results):
    text = write_index(results, results / "html").read_text()
    assert "<b>" not in text and "Case study <Fig. 2>" not in text
    assert "Case study &lt;Fig. 2&gt;" in text and "JPEG &amp; friends" in text
    assert "a &lt;b&gt;&amp;&#x27;&quot;odd&quot;.csv" in text


def test_descriptions_precedence_and_fallback(results):
    (results / "09_jpeg_defense" / "descriptions.json").write_text(json.dumps({"fig3.png": "from the notebook"}))
    text = write_index(results, results / "html", descriptions={"08_case_study/fig2.png": "mine <2>"}).read_text()
    assert "mine &lt;2&gt;" in text
    assert "from the notebook" in text
    assert "descriptions.json" not in text
    # a file without a description falls back to the notebook title
    assert "table from 09 · JPEG &amp; friends" in text
    assert "every number the notebook reports" in text  # built-in description of metrics.json


def test_custom_out_relative_links_and_atomic(results, tmp_path):
    out = write_index(results, results / "html", out=results / "sub" / "page.html", title="T & T")
    text = out.read_text()
    assert "<title>T &amp; T</title>" in text
    assert "../08_case_study/fig2.png" in _hrefs(text)
    assert not [p for p in (results / "sub").iterdir() if p.name != "page.html"]  # no temp file left


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results_root"):
        write_index(tmp_path / "nope", tmp_path / "nope" / "html")


def test_missing_html_dir_still_lists_results(results):
    text = write_index(results, results / "no-html").read_text()
    assert "08_case_study/fig2.png" in _hrefs(text)


def test_seconds_that_are_not_a_number_are_left_out(results):
    """pipeline.json written by hand or by a failed run: null / text seconds and failed notebooks get no time."""
    (results / "pipeline.json").write_text(json.dumps({"notebooks": {
        "08_case_study": {"status": "ok", "seconds": None},
        "09_jpeg_defense": {"status": "failed", "seconds": 3.0, "error": "boom"},
        "11_orphan": {"status": "ok", "seconds": "12"}, "misc": [1, 2]}}))
    text = write_index(results).read_text()
    assert "ran in" not in text
    (results / "pipeline.json").write_text(json.dumps({"notebooks": {
        "08_case_study": {"status": "ok", "seconds": None}, "09_jpeg_defense": {"status": "ok", "seconds": 7}}}))
    text = write_index(results).read_text()
    assert text.count("ran in") == 1 and "ran in 7.0 s" in text
