"""Behaviour of mlnb.metrics that the other unit tests left unpinned (found by mutation testing,
docs/MUTATION.md): every boundary message names the argument at fault (ARCHITECTURE: "messages name
the argument, the problem and the fix"), the model path scores in batches of batch_size (default
256) with a check per batch, and Table III's F1 on labels that are rarely right."""
from __future__ import annotations

import pytest
import torch

from mlnb import metrics as M

pytestmark = pytest.mark.unit


def _msg(fn, *args, **kwargs) -> str:
    with pytest.raises((ValueError, TypeError)) as err:
        fn(*args, **kwargs)
    return str(err.value)


def _example():
    x = torch.zeros(2, 1, 2, 2)
    x_adv = x + 1 / 255
    y = torch.tensor([[True, False, False], [True, True, False]])
    A = torch.tensor([[True, True, False], [False, False, True]])
    B = torch.tensor([[False, False, True], [False, False, False]])
    logits = torch.tensor([[-1.0, 1.0, -0.5], [2.0, -0.5, 0.5]])
    return logits, x, x_adv, y, A, B


# ----------------------------------------------------------------------------- messages name the argument
def test_predict_from_logits_names_the_logits():
    assert _msg(M.predict_from_logits, torch.tensor([[0.0, float("nan")]])) == (
        "logits contains NaN or Inf: the metrics need finite logits")


def test_rmsd_names_x_and_x_adv():
    x = torch.rand(2, 1, 2, 2)
    assert _msg(M.rmsd, x + 2, x).startswith("x must lie in [0, 1]")
    assert _msg(M.rmsd, x, x + 2).startswith("x_adv must lie in [0, 1]")


def test_hamming_loss_names_pred_y_star_and_mask():
    p = torch.zeros(2, 3, dtype=torch.bool)
    assert _msg(M.hamming_loss, p.float(), p, p).startswith("pred must be a bool tensor")
    assert _msg(M.hamming_loss, p, p[:, :2], p).startswith("y_star has shape (2, 2) but pred has (2, 3)")
    assert _msg(M.hamming_loss, p, p, p[:, :2]).startswith("mask has shape (2, 2) but pred has (2, 3)")


def test_kendall_tau_b_names_y_tau_and_scores():
    s = torch.rand(2, 3)
    assert _msg(M.kendall_tau_b, s, torch.zeros(2, 2, dtype=torch.int8)).startswith(
        "y_tau has shape (2, 2) but scores has (2, 3)")


def test_per_image_metrics_names_each_argument():
    logits, x, x_adv, y, A, B = _example()
    assert _msg(M.per_image_metrics, logits.masked_fill(A, float("nan")), x, x_adv, y, A, B) == (
        "logits_adv contains NaN or Inf: the metrics need finite logits")
    assert _msg(M.per_image_metrics, logits[:, :2], x, x_adv, y, A, B).startswith(
        "y has shape (2, 3) but logits_adv has (2, 2)")
    assert _msg(M.per_image_metrics, logits, x + 2, x_adv, y, A, B).startswith("x must lie in [0, 1]")
    assert _msg(M.per_image_metrics, logits, x, x_adv + 2, y, A, B).startswith("x_adv must lie in [0, 1]")


def test_per_image_metrics_checks_that_images_and_labels_have_the_same_rows():
    logits, x, x_adv, y, A, B = _example()
    x3, x_adv3 = torch.cat([x, x[:1]]), torch.cat([x_adv, x_adv[:1]])
    assert _msg(M.per_image_metrics, logits, x3, x_adv3, y, A, B).startswith(
        "batch sizes differ (x has 3, x_adv has 3, y has 2)")
    assert _msg(M.per_image_metrics, logits, x3, x_adv, y, A, B).startswith(
        "batch sizes differ (x has 3, x_adv has 2, y has 2)")
    assert _msg(M.per_image_metrics, logits, x, x_adv3, y, A, B).startswith(
        "batch sizes differ (x has 2, x_adv has 3, y has 2)")


def test_model_quality_names_scores_and_y():
    s = torch.rand(4, 3)
    y = s > 0.5
    assert _msg(M.model_quality, s + 1, y).startswith("scores must be probabilities in [0, 1]")
    assert _msg(M.model_quality, s, y[:, :2]).startswith("y has shape (4, 2) but scores has (4, 3)")
    assert _msg(M.model_quality, s, y.float()).startswith("y must be a bool tensor")
    assert _msg(M.model_quality, s[:0], y[:0]) == "scores is empty: pass at least one image"


# ----------------------------------------------------------------------------- the model path
class _Recorder(torch.nn.Module):
    """Logits from the mean pixel, recording the size of every batch it sees."""

    def __init__(self, num_labels: int):
        super().__init__()
        self.num_labels, self.sizes = num_labels, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return x.flatten(1).mean(1, keepdim=True).repeat(1, self.num_labels) - 0.5


def _images(n, c=3):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, c, 2, 2, generator=g)
    y = torch.zeros(n, 3, dtype=torch.bool)
    y[:, 0] = True
    A = torch.zeros_like(y)
    A[:, 1] = True
    return x, x.clamp(0.05, 0.95), y, A, ~A & ~y


def test_evaluate_attack_scores_the_model_in_batches_of_batch_size():
    x, x_adv, y, A, B = _images(5)
    model = _Recorder(3).eval()
    out = M.evaluate_attack(model, x, x_adv, y, A, B, batch_size=2)
    assert model.sizes == [2, 2, 1]
    with torch.no_grad():
        ref = M.evaluate_attack(model(x_adv), x, x_adv, y, A, B)
    assert all(out[k] == pytest.approx(ref[k], nan_ok=True) for k in ref)


def test_evaluate_attack_default_batch_is_256():
    x, x_adv, y, A, B = _images(300, c=1)
    model = _Recorder(3).eval()
    M.evaluate_attack(model, x, x_adv, y, A, B)
    assert model.sizes == [256, 44]


def test_evaluate_attack_checks_batch_size_and_names_x_adv_and_y():
    x, x_adv, y, A, B = _images(4)
    model = _Recorder(3).eval()
    assert _msg(M.evaluate_attack, model, x, x_adv, y, A, B, batch_size=2.5) == "batch_size must be a whole number, got 2.5"
    assert _msg(M.evaluate_attack, model, x, x_adv, y, A, B, batch_size=0).startswith(
        "batch_size must be a finite positive number, got 0")
    assert _msg(M.evaluate_attack, model, x, x_adv + 2, y, A, B).startswith("x_adv must lie in [0, 1]")
    assert _msg(M.evaluate_attack, model, x, x_adv, y.float(), A, B).startswith("y must be a bool tensor")


def test_evaluate_attack_checks_each_batch_of_logits_against_its_rows():
    x, x_adv, y, A, B = _images(4)

    class Short(_Recorder):  # drops the last row of every batch
        def forward(self, x):
            return super().forward(x)[:-1]

    assert _msg(M.evaluate_attack, Short(3).eval(), x, x_adv, y, A, B, batch_size=2).startswith(
        "model returned (1, 3) for 2 images")


# ----------------------------------------------------------------------------- Table III F1
def test_model_quality_f1_of_labels_mostly_missed_or_mostly_false():
    # label 0: 1 hit, 3 misses -> F1 2/5; label 1: 1 hit, 3 false alarms -> 2/5; label 2: never
    # predicted, never positive -> 0 (sklearn zero_division=0)
    y = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)
    s = torch.tensor([[0.9, 0.9, 0.1], [0.1, 0.9, 0.1], [0.1, 0.9, 0.1], [0.1, 0.9, 0.1]])
    q = M.model_quality(s, y)
    assert q["macro_f1"] == pytest.approx((0.4 + 0.4 + 0.0) / 3)
    assert q["micro_f1"] == pytest.approx(2 * 2 / (2 * 2 + 3 + 3))


def test_model_quality_micro_f1_without_positives_or_predictions_is_zero():
    q = M.model_quality(torch.full((3, 2), 0.1), torch.zeros(3, 2, dtype=torch.bool))
    assert q["micro_f1"] == 0.0 and q["macro_f1"] == 0.0


# ----------------------------------------------------------------------------- more messages
SCORE_KERNELS = ("ranking_loss", "average_precision", "instance_auc")


@pytest.mark.parametrize("name", SCORE_KERNELS)
def test_ranking_kernels_name_scores_and_y_star(name):
    fn = getattr(M, name)
    s, y = torch.rand(2, 3), torch.rand(2, 3) > 0.5
    assert _msg(fn, s.tolist(), y) == "scores must be a torch.Tensor of shape (N, L), got list"
    assert _msg(fn, s[0], y) == ("scores must be a float tensor (N, L), got dtype torch.float32 and shape (3,): "
                                 "pass one row of label scores per image")
    assert _msg(fn, s.long(), y).startswith("scores must be a float tensor (N, L), got dtype torch.int64")
    assert _msg(fn, s.masked_fill(y, float("inf")), y) == "scores contains NaN or Inf: the metrics need finite scores"
    assert _msg(fn, s, y.float()).startswith("y_star must be a bool tensor")
    assert _msg(fn, s, y[:, :2]).startswith("y_star has shape (2, 2) but scores has (2, 3)")


def test_instance_f1_names_pred_and_y_star():
    p = torch.zeros(2, 3, dtype=torch.bool)
    assert _msg(M.instance_f1, p.float(), p).startswith("pred must be a bool tensor")
    assert _msg(M.instance_f1, p, p.float()).startswith("y_star must be a bool tensor")
    assert _msg(M.instance_f1, p, p[:, :2]).startswith("y_star has shape (2, 2) but pred has (2, 3)")


def test_kendall_tau_b_needs_a_two_dimensional_y_tau():
    assert _msg(M.kendall_tau_b, torch.rand(1, 3), torch.zeros(3, dtype=torch.int8)) == "y_tau must be a 2-D (N, L) tensor"
    assert _msg(M.predict, torch.tensor([[0.5, float("nan")]])) == (
        "scores contains NaN or Inf: the metrics need finite scores")


def test_probability_message_gives_the_range_found():
    s = torch.tensor([[0.5, 1.25], [-0.5, 0.0]])
    assert _msg(M.model_quality, s, s > 0) == (
        "scores must be probabilities in [0, 1], found values in [-0.5, 1.25]: pass torch.sigmoid(logits)")
    assert _msg(M.model_quality, s.clamp(min=0), s > 0).startswith("scores must be probabilities")
    assert _msg(M.model_quality, s.clamp(max=1), s > 0).startswith("scores must be probabilities")


# ----------------------------------------------------------------------------- values on small rows
def test_a_single_pair_counts_fully():
    s = torch.tensor([[0.2, 0.8], [0.8, 0.2]], dtype=torch.float64)
    y = torch.tensor([[True, False], [True, False]])  # one (positive, negative) pair per row
    assert M.ranking_loss(s, y).tolist() == [1.0, 0.0]
    assert M.instance_auc(s, y).tolist() == [0.0, 1.0]


def test_one_predicted_label_and_no_target_label_is_f1_zero():
    pred = torch.tensor([[True, False, False], [False, False, False]])
    y_star = torch.zeros(2, 3, dtype=torch.bool)
    assert M.instance_f1(pred, y_star).tolist() == [0.0, 1.0]


def test_ranking_metrics_keep_float64_and_its_precision():
    s = torch.tensor([[0.1, 0.5, 0.3, 0.2]], dtype=torch.float64)
    y = torch.tensor([[True, False, True, False]])
    # pairs (pos, neg): (0.1, 0.5) wrong, (0.1, 0.2) wrong, (0.3, 0.5) wrong, (0.3, 0.2) right
    for fn, want in ((M.ranking_loss, 3 / 4), (M.instance_auc, 1 / 4), (M.average_precision, 1 / 2)):
        out = fn(s, y)
        assert out.dtype == torch.float64 and out.item() == want
    from scipy.stats import kendalltau

    y_tau = torch.tensor([[0, 2, 1, 1]], dtype=torch.int8)
    tau = M.kendall_tau_b(s, y_tau)
    want = kendalltau(s[0].numpy(), y_tau[0].numpy()).statistic
    assert tau.dtype == torch.float64 and tau.item() == pytest.approx(want, abs=1e-15) and want not in (0.0, 1.0)


def test_kendall_kernel_takes_float_and_bool_criteria():
    from mlnb.metrics import tau_b_kernel as kernel

    s = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    assert kernel(s, torch.tensor([[0.1, 0.2, 0.25, 0.3]])).item() == pytest.approx(1.0)  # fractional: not truncated
    assert kernel(s, torch.tensor([[False, False, True, True]])).item() == pytest.approx(4 / 24 ** 0.5 / 1)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kendall_tau_b_of_half_precision_logits_with_many_labels(dtype):
    # 20 labels: 380 ordered pairs, so nx * ny = 144400 overflows float16 (max 65504)
    z = torch.linspace(-5, 5, 20).unsqueeze(0)
    y_tau = torch.arange(20, dtype=torch.int8).unsqueeze(0)
    y_tau[0, :2] = 0  # one tie in the criterion
    want = M.kendall_tau_b(z.double(), y_tau).item()
    got = M.kendall_tau_b(z.to(dtype), y_tau)
    assert got.dtype == dtype and got.item() == pytest.approx(want, rel=1e-2)


def test_average_precision_keeps_the_scores_dtype():
    """Precision is computed in the scores' own floating dtype (half stays half, double stays double)."""
    s = torch.tensor([[0.9, 0.2, 0.5, 0.4], [0.1, 0.7, 0.3, 0.6]])
    y = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0]], dtype=torch.bool)
    want = M.average_precision(s.double(), y)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        ap = M.average_precision(s.to(dtype), y)
        assert ap.dtype == dtype and torch.allclose(ap.double(), want, atol=1e-2)
