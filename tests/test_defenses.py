"""Unit tests of mlnb.purify and mlnb.defenses: ranges, shapes, codecs and the straight-through (BPDA) wrapper."""
import pytest
import torch
from torch import nn

from mlnb import defenses as D
from mlnb import purify as P
from mlnb.target import Target

pytestmark = pytest.mark.unit


@pytest.fixture
def x():
    g = torch.Generator().manual_seed(0)
    # smooth-ish images (JPEG behaves like on photos) plus a little noise
    base = torch.rand(4, 3, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(base, size=(32, 32), mode="bilinear", align_corners=False)
    return (img + 0.02 * torch.rand(4, 3, 32, 32, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("fn", [
    P.png_roundtrip, lambda t: P.jpeg(t, 50), lambda t: P.bit_depth(t, 3), lambda t: P.median_smooth(t, 3),
])
def test_shape_dtype_range(fn, x):
    out = fn(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    assert out.min() >= 0 and out.max() <= 1


def test_png_roundtrip_equals_8bit_rounding_and_real_codec(x):
    rounded = torch.round(x * 255) / 255
    assert torch.equal(P.png_roundtrip(x), rounded)
    assert torch.equal(P.png_roundtrip(x, encode=True), rounded)
    gray = x[:, :1]
    assert torch.equal(P.png_roundtrip(gray, encode=True), torch.round(gray * 255) / 255)


def test_jpeg_quality_100_close_to_identity_and_low_quality_is_lossy(x):
    # libjpeg subsamples chroma (4:2:0) even at quality 100, so check near-identity on luminance:
    # grey images stored as 1 channel and as 3 equal channels
    grey = x.mean(1, keepdim=True)
    for img in (grey, grey.expand(-1, 3, -1, -1).contiguous()):
        err100 = (P.jpeg(img, 100) - img).abs()
        assert err100.mean() < 1 / 255 and err100.max() < 6 / 255
    assert (P.jpeg(x, 10) - x).abs().mean() > 4 * (P.jpeg(x, 100) - x).abs().mean() / 3


def test_jpeg_grayscale_and_double(x):
    out = P.jpeg(x[:, :1].double(), 90)
    assert out.shape == (4, 1, 32, 32) and out.dtype == torch.float64


@pytest.mark.parametrize("bad", [0, 101, 50.0, True])
def test_jpeg_rejects_bad_quality(x, bad):
    with pytest.raises((ValueError, TypeError), match="quality"):
        P.jpeg(x, bad)


def test_jpeg_rejects_two_channels(x):
    with pytest.raises(ValueError, match="channels"):
        P.jpeg(x[:, :2])


def test_bit_depth_idempotent_levels_and_8bit(x):
    for bits in (1, 3, 5, 8):
        once = P.bit_depth(x, bits)
        assert torch.equal(P.bit_depth(once, bits), once)
        assert torch.unique(once).numel() <= 2 ** bits
    assert torch.equal(P.bit_depth(x, 8), P.png_roundtrip(x))
    with pytest.raises(ValueError, match="bits"):
        P.bit_depth(x, 9)


@pytest.mark.parametrize("k", [3, 5, 7])
def test_median_smooth_equals_unfold_median(x, k):
    p = k // 2
    padded = torch.nn.functional.pad(x.reshape(12, 1, 32, 32), (p, p, p, p), mode="reflect")
    ref = torch.nn.functional.unfold(padded, k).median(dim=1).values.reshape(4, 3, 32, 32)
    assert torch.equal(P.median_smooth(x, k), ref)
    rect = x[:, :, :9, :20]
    padded = torch.nn.functional.pad(rect.reshape(12, 1, 9, 20), (p, p, p, p), mode="reflect")
    ref = torch.nn.functional.unfold(padded, k).median(dim=1).values.reshape(4, 3, 9, 20)
    assert torch.equal(P.median_smooth(rect, k), ref)


def test_median_smooth_removes_salt(x):
    flat = torch.full((1, 1, 9, 9), 0.5)
    salty = flat.clone()
    salty[0, 0, 4, 4] = 1.0
    assert torch.equal(P.median_smooth(salty, 3), flat)
    assert torch.equal(P.median_smooth(x, 1), x)
    with pytest.raises(ValueError, match="odd"):
        P.median_smooth(x, 4)
    with pytest.raises(ValueError, match="too large"):
        P.median_smooth(x[:, :, :2, :2], 5)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        P.jpeg(torch.full((1, 3, 8, 8), 2.0))
    with pytest.raises(ValueError, match="4-D"):
        P.bit_depth(torch.rand(3, 8, 8))


def test_straight_through_forward_is_defense_and_gradient_is_identity(x):
    defense = P.make_defense("jpeg", quality=30)
    st = D.straight_through(defense)
    xr = x.clone().requires_grad_(True)
    out = st(xr)
    assert torch.equal(out.detach(), defense(x))
    w = torch.randn_like(x)
    (out * w).sum().backward()
    assert torch.equal(xr.grad, w)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 32 * 32, 4)

    def forward(self, t):
        return self.fc(t.flatten(1))


def test_defended_model_forward_mode_and_bpda_gradient(x):
    torch.manual_seed(0)
    model = _Linear().eval()
    defense = P.make_defense("bit_depth", bits=3)
    dm = D.DefendedModel(model, defense)
    assert not dm.training
    xr = x.clone().requires_grad_(True)
    logits = dm(xr)
    assert torch.allclose(logits, model(defense(x)))
    logits[:, 2].sum().backward()
    # gradient of model at the defended point, passed straight through
    expected = model.fc.weight[2].reshape(1, 3, 32, 32).expand_as(x)
    assert torch.allclose(xr.grad, expected)
    # without BPDA the rounding kills the gradient (gradient masking)
    dm_plain = D.DefendedModel(model, defense, bpda=False)
    xr2 = x.clone().requires_grad_(True)
    dm_plain(xr2)[:, 2].sum().backward()
    assert xr2.grad.abs().max() == 0
    with pytest.raises(TypeError, match="model"):
        D.DefendedModel(lambda t: t, defense)


def test_make_defense_checks_now():
    with pytest.raises(ValueError, match="defense"):
        P.make_defense("blur")
    with pytest.raises(ValueError, match="quality"):
        P.make_defense("jpeg", quality=0)


def test_histogram_overlap():
    a = torch.linspace(0, 1, 101)
    assert D.histogram_overlap(a, a) == pytest.approx(1.0)
    assert D.histogram_overlap(torch.zeros(10), torch.ones(10)) == pytest.approx(0.0)
    assert D.histogram_overlap(torch.zeros(10), torch.cat([torch.zeros(5), torch.ones(5)])) == pytest.approx(0.5)


def test_evaluate_defense_decides_success_with_the_target(x):
    torch.manual_seed(0)
    model = _Linear().eval()
    with torch.no_grad():
        yy = model(x) > 0
    AA = torch.zeros_like(yy)
    AA[:, 0] = True
    out = D.evaluate_defense(model, None, x, yy, x, AA, ~AA)
    assert out["clean_map"] == pytest.approx(1.0) and out["success_rate"] == 0.0
    # success after the defense is the Target's, on the defended logits (here the clean ones: flip label 0)
    flipped = x.clone()
    out_f = D.evaluate_defense(model, None, x, yy, flipped, AA, ~AA)
    assert torch.equal(out_f["success"], Target(yy, AA, ~AA).met(out_f["adv_logits"]))
    assert out["adv_scores"].shape == (4, 4) and out["success"].dtype == torch.bool
    out_j = D.evaluate_defense(model, P.make_defense("jpeg", quality=20), x, yy)
    assert "success_rate" not in out_j and 0 < out_j["clean_map"] <= 1
    with pytest.raises(ValueError, match="pass A and B"):
        D.evaluate_defense(model, None, x, yy, x)


def test_evaluate_defense_checks_batch_size_and_nan_logits():
    class NanOnDark(nn.Module):
        def forward(self, x):
            z = x.flatten(1)[:, :2] - 0.5
            return torch.where(x.flatten(1)[:, :2].mean(1, keepdim=True) < 0.2, float("nan"), z)

    x = torch.full((2, 1, 2, 2), 0.8)
    y = torch.tensor([[True, False], [False, True]])
    A, B = torch.tensor([[True, False], [False, True]]), torch.tensor([[False, True], [True, False]])
    with pytest.raises(ValueError, match="batch_size must be"):
        D.evaluate_defense(NanOnDark().eval(), None, x, y, batch_size=0)
    with pytest.raises(ValueError, match="contains NaN or Inf"):
        D.evaluate_defense(NanOnDark().eval(), None, x, y, x * 0.1, A, B)


def test_make_defense_accepts_a_kernel_valid_for_larger_images_than_its_probe():
    defense = P.make_defense("median", kernel=33)  # too wide for 32x32 only
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(0))
    assert torch.equal(defense(x), P.median_smooth(x, 33))
    with pytest.raises(ValueError, match="kernel 33 is too large for 8x8 images"):
        defense(torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="kernel must be an odd int"):
        P.make_defense("median", kernel=4)
