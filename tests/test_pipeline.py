"""mlnb.running.pipeline.run_notebooks without a kernel (papermill replaced): the device is checked
before anything runs, and a notebook that raises is logged "failed" with its error, never left "running"."""
from __future__ import annotations

import json

import papermill
import pytest

from mlnb.running import pipeline

pytestmark = pytest.mark.unit


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNB_RESULTS", str(tmp_path / "results"))
    return tmp_path / "results"


def _fake(calls, error=None):
    def execute_notebook(path, out, **kwargs):
        calls.append((path, kwargs["parameters"]))
        if error is not None:
            raise error
    return execute_notebook


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "auto:cpu", "", None])
def test_unknown_device_is_refused_before_any_kernel(results, monkeypatch, device):
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake(calls))
    with pytest.raises(ValueError, match=f"unknown device {str(device)!r}: choose one of 'auto', 'cpu', 'cuda'"):
        pipeline.run_notebooks("smoke", device=device, only=["00"], html=False, progress=False)
    assert calls == [] and not (results / "pipeline.json").exists()
    with pytest.raises(ValueError, match="seed must be a non-negative int"):
        pipeline.run_notebooks("smoke", seed=-1, only=["00"], html=False, progress=False)
    assert calls == []


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:1", "mps"])
def test_valid_devices_run_without_requiring_the_device(results, monkeypatch, device):
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake(calls))
    log = pipeline.run_notebooks("smoke", device=device, only=["00"], html=False, progress=False)
    assert [c[1]["DEVICE"] for c in calls] == [device]
    assert log["notebooks"]["00_definitions"]["status"] == "ok"
    assert json.loads((results / "pipeline.json").read_text())["notebooks"]["00_definitions"]["status"] == "ok"


def test_a_failing_notebook_is_logged_failed_with_its_error(results, monkeypatch):
    calls = []
    monkeypatch.setattr(papermill, "execute_notebook", _fake(calls, RuntimeError("the kernel died")))
    with pytest.raises(RuntimeError, match="the kernel died"):
        pipeline.run_notebooks("smoke", only=["00", "01"], html=False, progress=False)
    entry = json.loads((results / "pipeline.json").read_text())["notebooks"]
    assert list(entry) == ["00_definitions"] and len(calls) == 1  # the run stopped at the first failure
    assert entry["00_definitions"]["status"] == "failed"
    assert entry["00_definitions"]["error"] == "RuntimeError: the kernel died"
    assert isinstance(entry["00_definitions"]["seconds"], float)
