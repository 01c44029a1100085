"""Papermill smoke runs: every notebook executes under ``PRESET="smoke"`` and writes its metrics.json.

The executed copies are kept in ``build/nbval`` only by the nbval step of ``make test``; here they go
to a temporary folder.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mlnb.pipeline import notebook_paths

pytestmark = pytest.mark.notebooks

NOTEBOOKS = notebook_paths()
CELL_TIMEOUT_S = 300  # a smoke cell takes seconds; a lost kernel message must not hang the suite


def _skeleton_problems(path: Path) -> list[str]:
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    problems = []
    if not cells or cells[0]["cell_type"] != "markdown" or not "".join(cells[0]["source"]).startswith(f"# {path.stem[:2]}"):
        problems.append("first cell must be a markdown title '# NN · ...'")
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"needs exactly one cell tagged 'parameters', found {len(tagged)}")
    else:
        src = "".join(tagged[0]["source"])
        for name in ("SEED", "DEVICE", "PRESET"):
            if f"{name}:" not in src:
                problems.append(f"parameters cell lacks an annotated {name}")
    if any(c.get("outputs") for c in cells if c["cell_type"] == "code"):
        problems.append("committed with outputs: run `make strip`")
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    if "sys.path" in code:
        problems.append("uses sys.path tricks; import from mlnb")
    if cells[-1]["cell_type"] != "markdown":
        problems.append("last cell must be the markdown summary and exercises")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_skeleton(path):
    assert _skeleton_problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_on_smoke(path, tmp_path):
    import papermill as pm

    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    out = tmp_path / path.name
    for attempt in range(2):
        try:
            pm.execute_notebook(str(path), str(out), parameters={"PRESET": "smoke", "SEED": 0}, cwd=str(path.parent),
                                kernel_name="python3", progress_bar=False, execution_timeout=CELL_TIMEOUT_S)
            break
        except (CellTimeoutError, DeadKernelError, TimeoutError):
            # jupyter's client can wait forever for a kernel message that was lost (kernel idle, client
            # waiting): a cell timeout turns that hang into an error, and the notebook is run once more
            if attempt:
                raise
    metrics_file = Path(os.environ["MLNB_RESULTS"]) / path.stem / "metrics.json"
    assert metrics_file.is_file(), f"{path.name} did not write {metrics_file}"
    record = json.loads(metrics_file.read_text())
    assert record["notebook"] == path.stem
    assert record["params"].get("PRESET") == "smoke", "write_metrics must receive every parameter"
    assert record["metrics"], "metrics.json holds no metrics"
    assert record["environment"]["mlnb"]
