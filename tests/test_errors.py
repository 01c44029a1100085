"""Every row of the README's "Errors and what they mean" table, triggered through a public function.

Each test raises one documented error and checks its message with ``match=``. Every excerpt is
passed to :func:`raises` as a plain string literal, and :func:`test_readme_table_matches_these_tests`
parses both this file and the README, so the table and the tests cannot drift apart: every README
row has a test here with the same error type and excerpt, and every excerpt here is in the README.
"""
from __future__ import annotations

import ast
import io
import re
import tarfile
from pathlib import Path

import pytest
import torch

from mlnb import attacks, data, experiments, labels, metrics, models, presets, purify, training, utils, voc
from mlnb.store import ResultStore

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Errors and what they mean"


def raises(exc, excerpt: str):
    """``pytest.raises(exc, match=<excerpt taken literally>)``."""
    return pytest.raises(exc, match=re.escape(excerpt))


class Tiny(torch.nn.Module):
    """A fixed random 1-conv model: ``(N, 1, 4, 4)`` images -> ``(N, L)`` logits."""

    def __init__(self, num_labels: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, num_labels, 4)

    def forward(self, x):
        return self.conv(x).flatten(1)


@pytest.fixture
def case():
    """``(model in eval mode, x (2, 1, 4, 4), y, A, B)`` with a valid target."""
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([[True, False, True], [False, True, False]])
    A = torch.tensor([[True, False, False], [False, True, False]])
    return Tiny().eval(), x, y, A, ~A


FAST = {"progress": False}


# ----------------------------------------------------------------------------- targets and masks
def test_a_and_b_overlap(case):
    model, x, y, A, B = case
    with raises(ValueError, "A and B overlap at image 0 label 0"):
        attacks.ml_cw(model, x, y, A, A | B, **FAST)


def test_a_empty(case):
    model, x, y, A, B = case
    with raises(ValueError, "A is empty for images 0, 1"):
        attacks.fgs(model, x, y, torch.zeros_like(A), B, **FAST)


def test_mask_wrong_shape(case):
    model, x, y, A, B = case
    with raises(ValueError, "masks need one row per image and one column per label"):
        attacks.fgs(model, x, y, A[:, :2], B[:, :2], **FAST)


def test_mask_wrong_dtype(case):
    model, x, y, A, B = case
    with raises(ValueError, "A must be a bool tensor (N, L)"):
        attacks.ml_dp(model, x, y, A.float(), B, **FAST)


def test_labels_not_binary(case):
    model, x, y, A, B = case
    with raises(ValueError, "labels must be binary: pass a bool mask"):
        attacks.fgs(model, x, y.float() * 2, A, B, **FAST)


def test_labels_in_pm1(case):
    with raises(ValueError, "labels look like the paper's ±1: pass y > 0"):
        labels.random_case(labels.to_pm1(case[2]))


def test_batch_sizes_differ(case):
    model, x, y, A, B = case
    with raises(ValueError, "batch sizes differ"):
        attacks.fgs(model, x[:1], y, A, B, **FAST)


def test_label_count_differs_from_model_output(case):
    model, x, y, A, B = case
    pad = torch.zeros(2, 1, dtype=torch.bool)
    with raises(ValueError, "label count mismatch: the model predicts 3 labels"):
        attacks.rank2(model, x, torch.cat([y, pad], 1), torch.cat([A, pad], 1), torch.cat([B, pad], 1), **FAST)


def test_label_count_differs_in_evaluate_attack(case):
    model, x, y, A, B = case
    pad = torch.zeros(2, 1, dtype=torch.bool)
    with raises(ValueError, "but the label masks (y, A, B) have 4 columns"):
        metrics.evaluate_attack(model, x, x, torch.cat([y, pad], 1), torch.cat([A, pad], 1), torch.cat([B, pad], 1))


# ----------------------------------------------------------------------------- images
def test_images_not_a_tensor(case):
    model, x, y, A, B = case
    with raises(TypeError, "x must be a torch.Tensor of shape (N, C, H, W)"):
        attacks.fgs(model, x.numpy(), y, A, B, **FAST)


def test_images_not_4d(case):
    model, x, y, A, B = case
    with raises(ValueError, "x must be 4-D (N, C, H, W)"):
        attacks.fgs(model, x[0], y, A, B, **FAST)


def test_images_not_float(case):
    model, x, y, A, B = case
    with raises(ValueError, "must be a float tensor in [0, 1], got dtype torch.uint8"):
        attacks.fg(model, (x * 255).to(torch.uint8), y, A, B, **FAST)


def test_images_outside_unit_range(case):
    model, x, y, A, B = case
    with raises(ValueError, "x must lie in [0, 1]"):
        attacks.ml_cw(model, x * 255, y, A, B, **FAST)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_images_nan_or_inf(case, bad):
    model, x, y, A, B = case
    x = x.clone()
    x[1, 0, 2, 2] = bad
    with raises(ValueError, "x contains NaN or Inf in images 1"):
        attacks.rank1(model, x, y, A, B, **FAST)


def test_adversarial_images_outside_unit_range(case):
    model, x, y, A, B = case
    with raises(ValueError, "x_adv must lie in [0, 1]"):
        metrics.evaluate_attack(model, x, x + 2, y, A, B)


# ----------------------------------------------------------------------------- models
def test_model_in_training_mode(case):
    model, x, y, A, B = case
    with raises(ValueError, "model is in training mode"):
        attacks.fgs(model.train(), x, y, A, B, **FAST)


def test_model_in_training_mode_in_evaluate_attack(case):
    model, x, y, A, B = case
    with raises(ValueError, "call model.eval() first"):
        metrics.evaluate_attack(model.train(), x, x, y, A, B)


def test_submodule_in_training_mode(case):
    model, x, y, A, B = case
    model.conv.train()  # the top level says eval, a layer does not
    with raises(ValueError, "model is in training mode in its submodules conv (Conv2d)"):
        attacks.fgs(model, x, y, A, B, **FAST)


def test_images_require_grad(case):
    model, x, y, A, B = case
    with raises(ValueError, "x requires grad (it is part of an autograd graph): pass x.detach()"):
        attacks.ml_cw(model, x.requires_grad_(True), y, A, B, **FAST)


class NoGrad(torch.nn.Module):
    """A model whose forward runs under ``torch.no_grad()`` (e.g. a wrapped purifier)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        with torch.no_grad():
            return self.inner(x)


def test_model_without_input_gradient(case):
    model, x, y, A, B = case
    with raises(ValueError, "the model's logits do not depend differentiably on x"):
        attacks.fgs(NoGrad(model).eval(), x, y, A, B, **FAST)


def test_attack_under_inference_mode(case):
    model, x, y, A, B = case
    with torch.inference_mode(), raises(ValueError, "the attack was called under torch.inference_mode()"):
        attacks.ml_dp(model, x, y, A, B, **FAST)


def test_images_and_model_of_different_dtypes(case):
    model, x, y, A, B = case
    with raises(ValueError, "x is torch.float32 but the model's weights are torch.float64; pass x.to(torch.float64)"):
        attacks.ml_cw(model.double(), x, y, A, B, **FAST)


def test_numpy_number_as_a_parameter(case):
    import numpy as np

    model, x, y, A, B = case
    with raises(TypeError, "eps must be a Python int or float, got np.float32(0.1): pass eps=float(eps)"):
        attacks.fgs(model, x, y, A, B, eps=np.float32(0.1), **FAST)


def test_mask_not_a_tensor(case):
    model, x, y, A, B = case
    with raises(TypeError, "A must be a torch.Tensor of shape (N, L), got list"):
        attacks.fgs(model, x, y, A.tolist(), B, **FAST)


def test_kappa_beyond_probability_margin(case):
    model, x, y, A, B = case
    with raises(ValueError, "kappa=0.6 can never hold in probability space"):
        attacks.ml_cw(model, x, y, A, B, kappa=0.6, **FAST)


def test_rank_weights_not_finite(case):
    model, x, y, A, B = case
    with raises(ValueError, "weights must be 3 non-negative numbers"):
        attacks.rank1(model, x, y, A, B, weights=(float("nan"), 1.0, 1.0), **FAST)


def test_topk_with_one_label():
    model = Tiny(1).eval()
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with raises(ValueError, "top-k attacks need at least 2 labels"):
        attacks.topk_untargeted(model, x, torch.ones(2, 1, dtype=torch.bool), **FAST)


def test_topk_targets_among_true_labels(case):
    model, x, y, A, B = case
    with raises(ValueError, "targets must be labels outside y"):
        attacks.topk_targeted(model, x, y, y.clone(), k=2, **FAST)


def test_topk_universal_image_without_labels(case):
    model, x, y, A, B = case
    y = y.clone()
    y[1] = False
    with raises(ValueError, "every image needs at least one true label in y for an untargeted top-k attack"):
        attacks.topk_universal(model, x, y, **FAST)


def test_topk_fooling_goal_above_one(case):
    model, x, y, A, B = case
    with raises(ValueError, "fooling_goal is a rate in (0, 1]"):
        attacks.topk_universal(model, x, y, fooling_goal=2.0, **FAST)


def test_model_not_a_module(case):
    _, x, y, A, B = case
    with raises(TypeError, "model must be a torch.nn.Module"):
        attacks.fgs(lambda t: t, x, y, A, B, **FAST)


def test_model_returns_wrong_shape(case):
    _, x, y, A, B = case

    class Wrong(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(x.shape[0], 2, 3)

    with raises(ValueError, "the model must map (N, C, H, W) images to (N, L) logits"):
        attacks.ml_dp(Wrong().eval(), x, y, A, B, **FAST)


# ----------------------------------------------------------------------------- unknown names
def test_unknown_attack(tmp_path):
    with raises(ValueError, "unknown attack 'cw': choose one of 'fgs', 'fg', 'ml_cw'"):
        experiments.run_experiment("smoke", "cw", "random", out_dir=tmp_path)


def test_unknown_strategy(case):
    with raises(ValueError, "unknown strategy 'rand': choose one of 'random', 'extreme'"):
        labels.make_target("rand", case[2])


def test_unknown_backbone():
    with raises(ValueError, "unknown backbone 'vgg16': choose one of 'small_cnn'"):
        models.build_model("vgg16", 10)


def test_unknown_data_set():
    with raises(ValueError, "unknown data set name 'coco': choose one of 'animals', 'voc2007', 'voc2012'"):
        data.load_dataset("coco", "train")


def test_unknown_split():
    with raises(ValueError, "unknown split of 'animals' 'trainval': choose one of 'train', 'val', 'test'"):
        data.load_dataset("animals", "trainval")


def test_unknown_preset():
    with raises(ValueError, "unknown preset 'fast': choose one of 'paper', 'default', 'smoke'"):
        presets.get_preset("fast")


def test_unknown_preset_field():
    with raises(ValueError, "unknown preset field(s) ['n_image']"):
        presets.get_preset("smoke", n_image=3)


def test_unknown_label_name(case):
    with raises(ValueError, "unknown label name 'unicorn': choose one of cat, dog, sheep"):
        labels.reduce_label(case[2], "unicorn", names=("cat", "dog", "sheep"))


def test_unknown_defense():
    with raises(ValueError, "unknown defense 'blur': choose one of"):
        purify.make_defense("blur")


def test_unknown_device():
    with raises(ValueError, "unknown device 'gpu': choose one of 'auto', 'cpu', 'cuda', 'mps'"):
        utils.resolve_device("gpu")


def test_unknown_omega_zero(case):
    model, x, y, A, B = case
    with raises(ValueError, "unknown omega_zero 'D'"):
        attacks.rank1(model, x, y, A, B, omega_zero="D", **FAST)


def test_label_specified_strategy_without_label(case):
    with raises(ValueError, "strategy 'reduce' needs label=<index or name>"):
        labels.make_target("reduce", case[2])


def test_label_index_out_of_range(case):
    with raises(ValueError, "label index 7 is out of range: there are 3 labels (0..2)"):
        labels.augment_label(case[2], 7)


# ----------------------------------------------------------------------------- budgets and rates
def test_zero_iteration_budget(case):
    model, x, y, A, B = case
    with raises(ValueError, "max_iter must be >= 1, got 0"):
        attacks.ml_cw(model, x, y, A, B, max_iter=0, **FAST)


def test_non_integer_budget(case):
    model, x, y, A, B = case
    with raises(TypeError, "n_search must be an int, got float"):
        attacks.rank2(model, x, y, A, B, n_search=2.5, **FAST)


def test_negative_learning_rate(case):
    model, x, y, A, B = case
    with raises(ValueError, "lr must be a finite positive number, got -0.01"):
        attacks.rank1(model, x, y, A, B, lr=-0.01, **FAST)


def test_zero_epsilon(case):
    model, x, y, A, B = case
    with raises(ValueError, "eps_max must be a finite positive number, got 0"):
        attacks.fgs(model, x, y, A, B, eps_max=0, **FAST)


def test_unknown_eps_mode(case):
    model, x, y, A, B = case
    with raises(ValueError, "eps must be None (search ε per image), a number > 0 (one fixed ε) or 'scenario'"):
        attacks.fgs(model, x, y, A, B, eps="image", **FAST)


def test_float16_autocast(case):
    model, x, y, A, B = case
    with raises(ValueError, "autocast_dtype=torch.float16 is not supported"):
        attacks.ml_cw(model, x, y, A, B, autocast_dtype=torch.float16, **FAST)


def test_unknown_ml_dp_form(case):
    model, x, y, A, B = case
    with raises(ValueError, "unknown form 'printed': choose one of 'greedy', 'paper'"):
        attacks.ml_dp(model, x, y, A, B, form="printed", **FAST)


def test_zero_lambda(case):
    model, x, y, A, B = case
    with raises(ValueError, "lambda_init must be a finite positive number, got 0.0"):
        attacks.ml_cw(model, x, y, A, B, lambda_init=0.0, **FAST)


def test_zero_batch_size(case):
    model, x, y, A, B = case
    with raises(ValueError, "batch_size must be a finite positive number, got 0"):
        attacks.ml_dp(model, x, y, A, B, batch_size=0, **FAST)


def test_negative_training_learning_rate():
    model = models.build_model("small_cnn", 10)
    with raises(ValueError, "lr must be a finite positive number, got -1.0"):
        training.train_model(model, None, epochs=1, batch_size=2, lr=-1.0)


def test_bad_preset_override():
    with raises(ValueError, "n_general must be a finite positive number, got -5"):
        presets.get_preset("smoke", n_general=-5)


def test_negative_rmsd_bound(tmp_path):
    with raises(ValueError, "max_rmsd must be a finite positive number, got -1.0"):
        experiments.run_experiment("smoke", "ml_cw", "random", out_dir=tmp_path, max_rmsd=-1.0)


def test_negative_seed():
    with raises(ValueError, "seed must be a non-negative int, got -1"):
        utils.set_seed(-1)


# ----------------------------------------------------------------------------- scores given to metrics
def test_scores_not_probabilities(case):
    _, x, y, A, B = case
    with raises(ValueError, "scores must be probabilities in [0, 1]"):
        metrics.model_quality(torch.full((2, 3), 3.0), y)


def test_logits_nan(case):
    _, x, y, A, B = case
    with raises(ValueError, "logits_adv contains NaN or Inf: the metrics need finite logits"):
        metrics.evaluate_attack(torch.full((2, 3), float("nan")), x, x, y, A, B)


# ----------------------------------------------------------------------------- data and checkpoints
def test_voc_folder_missing(tmp_path):
    with raises(FileNotFoundError, "Pass download=True (load_dataset('voc2007', 'test', download=True))"):
        data.load_dataset("voc2007", "test", root=tmp_path)


def test_preset_needs_voc_but_it_is_absent(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNB_DATA", str(tmp_path))
    with raises(FileNotFoundError, "preset 'paper' needs PASCAL VOC 2007 but the folder"):
        training.get_target_model("paper", progress=False)


def test_runner_on_a_voc_preset_without_voc(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNB_DATA", str(tmp_path))
    with raises(FileNotFoundError, "fetch it with the download flag (run_experiment(..., download=True)"):
        experiments.run_experiment("paper", "ml_cw", "random", out_dir=tmp_path / "runs")


def test_unknown_attack_parameter(tmp_path):
    with raises(ValueError, "unknown parameter(s) ['max_iters'] for attack 'ml_cw': valid parameters are"):
        experiments.run_experiment("smoke", "ml_cw", "random", out_dir=tmp_path, params={"ml_cw": {"max_iters": 3}})


def _checkpoint(tmp_path: Path, num_labels: int = 3) -> Path:
    torch.manual_seed(0)
    model = models.build_model("small_cnn", num_labels)
    return training.save_model(model, tmp_path / "model.pt", {"backbone": "small_cnn", "num_labels": num_labels,
                                                              "image_size": 40, "label_names": list("abc")})


def test_checkpoint_corrupted(tmp_path):
    path = _checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:200])  # a truncated copy
    with raises(ValueError, "is corrupted or not an mlnb checkpoint"):
        training.load_model(path)


def test_checkpoint_not_from_mlnb(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with raises(ValueError, "is not an mlnb checkpoint (format 1)"):
        training.load_model(tmp_path / "other.pt")


def test_checkpoint_meta_missing(tmp_path):
    path = _checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    del payload["meta"]["backbone"]
    torch.save(payload, path)
    with raises(ValueError, "lacks the meta entries ['backbone']"):
        training.load_model(path)


def test_checkpoint_architecture_mismatch(tmp_path):
    path = _checkpoint(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["meta"]["backbone"] = "resnet18"
    torch.save(payload, path)
    with raises(ValueError, "does not fit a resnet18 with 3 labels"):
        training.load_model(path)


def test_checkpoint_label_count_mismatch(tmp_path):
    path = _checkpoint(tmp_path)
    with raises(ValueError, "has num_labels=3 but 10 was expected"):
        training.load_model(path, expect={"num_labels": 10})


def test_checkpoint_missing(tmp_path):
    with raises(FileNotFoundError, "no checkpoint at"):
        training.load_model(tmp_path / "absent.pt")


def test_archive_member_escapes_target(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("../../evil.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    (tmp_path / "voc").mkdir()
    with raises(ValueError, "would be written outside"):
        voc.safe_extract(archive, tmp_path / "voc")
    assert not (tmp_path.parent / "evil.txt").exists()


# ----------------------------------------------------------------------------- runner and store
def test_bad_command_line_parameter():
    with raises(ValueError, "write ATTACK.KEYWORD=VALUE"):
        experiments.main(["--preset", "smoke", "--param", "max_iter=3", "--out", "/nonexistent-never-written"])


def test_results_file_corrupt_in_the_middle(tmp_path):
    store = ResultStore(tmp_path, "run")
    store.append([{"index": 0, "image_id": "a"}])
    with open(store.shard, "ab") as fh:
        fh.write(b"garbage\n" + b'{"index": 1, "image_id": "b"}\n')
    with raises(ValueError, "corrupt line at byte"):
        ResultStore(tmp_path, "run")


# ----------------------------------------------------------------------------- the README table
def _readme_rows() -> list[tuple[str, str, str, str]]:
    text = (ROOT / "README.md").read_text()
    assert SECTION in text, f"README.md lacks the section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) == 4 and cells[1].startswith("`") and not set(cells[0]) <= {"-", " "}:
            excerpt = re.fullmatch(r"`(.+)`", cells[2])
            assert excerpt, f"README row {line!r}: the excerpt must be one `code span`"
            rows.append((cells[0], cells[1].strip("`"), excerpt.group(1), cells[3]))
    return rows


def _test_excerpts() -> dict[str, str]:
    """``{excerpt: error type}`` of every ``raises(Type, "excerpt")`` call in this file."""
    tree = ast.parse(Path(__file__).read_text())
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "raises" and len(node.args) == 2:
            exc, text = node.args
            assert isinstance(text, ast.Constant) and isinstance(exc, ast.Name), ast.unparse(node)
            out[text.value] = exc.id
    return out


def test_readme_table_matches_these_tests():
    rows, tested = _readme_rows(), _test_excerpts()
    assert len(rows) >= 40
    for situation, exc, excerpt, fix in rows:
        assert excerpt in tested, f"README row {situation!r}: no test here raises {excerpt!r}"
        assert tested[excerpt] == exc, f"README row {situation!r} says {exc}, the test expects {tested[excerpt]}"
        assert fix, f"README row {situation!r} gives no fix"
    missing = set(tested) - {r[2] for r in rows}
    assert not missing, f"errors tested here but not in the README table: {sorted(missing)}"
    assert len({r[2] for r in rows}) == len(rows), "two README rows share an excerpt"
