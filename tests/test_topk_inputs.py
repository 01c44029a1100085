"""The public top-k helpers check their arguments (mlnb.attacks.topk_targets, mlnb.attacks.topk_metrics):
each mistake fails at once with a message naming it, never with a raw TypeError / IndexError or a silently
wrong answer; and topk_report's default ``ks`` fits models with few labels."""
import re

import pytest
import torch

from mlnb.attacks.topk import topk_targets
from mlnb.attacks.topk_metrics import in_topk, topk_margin, topk_report, topk_success

pytestmark = pytest.mark.unit


def _case(n_labels=4):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, n_labels, generator=g)
    y = torch.zeros_like(z, dtype=torch.bool).scatter_(1, z.argmax(1, keepdim=True), True)
    return z, y


@pytest.mark.parametrize("call, error, message", [
    (lambda z, y: topk_targets(z, y.float(), 1), ValueError, "y must be a bool tensor (N, L)"),
    (lambda z, y: topk_targets(z[0], y[0], 1), ValueError, "logits must be a 2-D tensor (N, L)"),
    (lambda z, y: topk_targets(z, y, 1, generator=0), TypeError, "generator must be None or a torch.Generator"),
    (lambda z, y: topk_targets(z[:, :2], y, 1), ValueError, "y has 4 labels but the model predicts 2"),
    (lambda z, y: topk_targets(z, y[:3], 1), ValueError, "batch sizes differ (logits has 5, y has 3)"),
    (lambda z, y: in_topk(z, 0), ValueError, "k must lie in [1, 4], got 0"),
    (lambda z, y: topk_success(z, y, 0), ValueError, "k must lie in [1, 4], got 0"),
    (lambda z, y: topk_success(z, y, 5), ValueError, "k must lie in [1, 4], got 5"),
    (lambda z, y: topk_success(z, y.float(), 1), ValueError, "y must be a bool tensor (N, L)"),
    (lambda z, y: topk_success(z, y, 1, targets=~y[:, :3]), ValueError, "targets has 3 labels"),
    (lambda z, y: topk_margin(z.masked_fill(y, torch.nan), y, 1), ValueError, "logits contains NaN"),
])
def test_bad_arguments_fail_with_a_clear_message(call, error, message):
    z, y = _case()
    with pytest.raises(error, match=re.escape(message)):
        call(z, y)


def test_valid_generator_and_answers_unchanged():
    z, y = _case()
    t = topk_targets(z, y, 2, "random", generator=torch.Generator().manual_seed(0))
    assert (t.sum(1) == 2).all() and not (t & y).any()
    assert in_topk(z, 4).all() and (in_topk(z, 1).sum(1) == 1).all()
    assert not topk_success(z, y, 1).any()  # the true label is the top one


def test_report_default_ks_fit_the_label_count():
    z, y = _case(n_labels=3)
    x = torch.rand(5, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    rep = topk_report(z, y, x, x)
    assert sorted(k for k in rep if k.startswith("success@")) == ["success@1", "success@2", "success@3"]
    assert rep["success@1"] == 0.0 and rep["success@3"] == 0.0 and rep["l2"] == 0.0
    assert set(topk_report(*_case(n_labels=6), torch.rand(5, 1, 2, 2), torch.rand(5, 1, 2, 2))) >= {"success@5"}
    with pytest.raises(ValueError, match=re.escape("ks[1] must lie in [1, 3], got 5")):
        topk_report(z, y, x, x, ks=(1, 5))
    with pytest.raises(TypeError, match="ks must be a non-empty tuple of ints"):
        topk_report(z, y, x, x, ks=2)
    with pytest.raises(ValueError, match=re.escape("x_adv has shape (5, 1, 2, 1) but x has (5, 1, 2, 2)")):
        topk_report(z, y, x, x[..., :1])
