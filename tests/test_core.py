"""Validation helpers, utilities, presets and the notebook pipeline's plumbing."""
from __future__ import annotations

import json

import pytest
import torch

from mlnb import presets, utils, validate
from mlnb.running.pipeline import main as pipeline_main, notebook_paths

pytestmark = pytest.mark.unit


def test_check_images_accepts_valid_and_names_each_problem():
    validate.check_images(torch.rand(2, 3, 4, 4))
    with pytest.raises(ValueError, match="4-D"):
        validate.check_images(torch.rand(3, 4, 4))
    with pytest.raises(ValueError, match="float"):
        validate.check_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        validate.check_images(torch.full((1, 3, 2, 2), 255.0))
    bad = torch.rand(3, 1, 2, 2)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in images 1"):
        validate.check_images(bad)
    with pytest.raises(TypeError, match="torch.Tensor"):
        validate.check_images([[0.5]])


def test_check_label_matrix_hints_at_pm1_labels():
    with pytest.raises(ValueError, match=r"y > 0"):
        validate.check_label_matrix(torch.tensor([[-1, 1]]))
    with pytest.raises(ValueError, match="binary"):
        validate.check_label_matrix(torch.tensor([[0.2, 0.7]]))
    with pytest.raises(ValueError, match="model predicts 3"):
        validate.check_label_matrix(torch.zeros(1, 2, dtype=torch.bool), num_labels=3)


def test_check_positive_and_choice():
    validate.check_positive("lr", 0.1)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="lr"):
            validate.check_positive("lr", bad)
    with pytest.raises(TypeError, match="lr must be a number"):
        validate.check_positive("lr", "0.1")
    with pytest.raises(ValueError, match="whole number"):
        validate.check_positive("max_iter", 2.5, integer=True)
    with pytest.raises(ValueError, match="choose one of 'a', 'b'"):
        validate.check_choice("attack", "c", ["a", "b"])


def test_check_eval_model_and_logits():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="model.eval"):
        validate.check_eval_model(model)
    validate.check_eval_model(model.eval())
    with pytest.raises(ValueError, match=r"\(4, 3\) logits"):
        validate.check_logits(torch.zeros(4, 2), 4, 3)


def test_set_seed_is_reproducible():
    a = torch.rand(3, generator=utils.set_seed(5))
    b = torch.rand(3, generator=utils.set_seed(5))
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="seed"):
        utils.set_seed(-1)


def test_resolve_device():
    assert utils.resolve_device("cpu").type == "cpu"
    assert utils.resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        utils.resolve_device("tpu")


def test_param_hash_is_order_independent_and_sensitive():
    assert utils.param_hash({"a": 1, "b": 2.0}) == utils.param_hash({"b": 2.0, "a": 1})
    assert utils.param_hash({"a": 1}) != utils.param_hash({"a": 2})
    assert utils.param_hash({"t": torch.tensor([1, 2])}) == utils.param_hash({"t": [1, 2]})


def test_write_metrics_records_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNB_RESULTS", str(tmp_path))
    path = utils.write_metrics("99_demo", {"x": torch.tensor(1.5)}, {"PRESET": "smoke"}, seed=3, device="cpu")
    record = json.loads(path.read_text())
    assert record["metrics"] == {"x": 1.5}
    assert record["seed"] == 3 and record["params_hash"] == utils.param_hash({"PRESET": "smoke"})
    assert record["environment"]["torch"] == torch.__version__ and record["environment"]["device"] == "cpu"
    assert not list(tmp_path.glob("99_demo/.*tmp"))  # the atomic write left no temporary file


def test_atomic_write_keeps_old_file_when_write_fails(tmp_path):
    target = tmp_path / "t.json"
    utils.write_json(target, {"ok": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        utils.write_json(target, {"bad": Boom()})
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


def test_presets_are_consistent():
    for name, preset in presets.PRESETS.items():
        assert preset.name == name
        assert set(preset.attacks) <= set(presets.ATTACK_NAMES)
        for attack in presets.ATTACK_NAMES:
            assert isinstance(preset.attack_params(attack), dict)
    paper = presets.get_preset("paper")
    assert paper.attacks["ml_cw"] == {"lambda_init": 1e5, "n_search": 10, "max_iter": 1000, "lr": 1e-2}
    assert paper.attacks["ml_dp"]["max_iter"] == 20 and paper.image_size == 299
    assert (paper.reduce_label, paper.augment_label) == ("person", "sheep")
    assert presets.get_preset("smoke", n_general=3).n_general == 3
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        presets.get_preset("fast")
    with pytest.raises(ValueError, match="unknown preset field"):
        presets.get_preset("smoke", n_images=3)


def test_pipeline_lists_notebooks_in_reading_order():
    stems = [p.stem for p in notebook_paths()]
    assert stems == sorted(stems) and stems[0].startswith("00_")
    with pytest.raises(ValueError, match="unknown notebook"):
        notebook_paths(["99"])


def test_pipeline_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        pipeline_main(["--help"])
    assert exc.value.code == 0 and "papermill" in capsys.readouterr().out


@pytest.mark.unit
def test_atomic_writes_follow_the_umask(tmp_path):
    """Files written atomically get the mode a plain open() would give (mkstemp alone makes 0600)."""
    import os
    import stat

    from mlnb.utils import atomic_write_text, write_json

    old = os.umask(0o022)
    try:
        a = atomic_write_text(tmp_path / "a.txt", "x")
        b = write_json(tmp_path / "b.json", {"k": 1})
        for p in (a, b):
            assert stat.S_IMODE(p.stat().st_mode) == 0o644, oct(p.stat().st_mode)
        os.umask(0o077)
        c = atomic_write_text(tmp_path / "c.txt", "x")
        assert stat.S_IMODE(c.stat().st_mode) == 0o600
    finally:
        os.umask(old)
