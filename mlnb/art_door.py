"""The door for users of the Adversarial Robustness Toolbox (ART, ``pip install mlnb[art]``): ART
``EvasionAttack`` subclasses that run ``mlnb``'s targeted multi-label attacks on an ART
``PyTorchClassifier`` whose model maps images to ``(N, L)`` logits (one per label, trained with
``BCEWithLogitsLoss``), with one ``generate`` call, as ART's own targeted attacks are called:

    >>> classifier = PyTorchClassifier(model, loss=torch.nn.BCEWithLogitsLoss(), input_shape=(3, 64, 64),
    ...                                nb_classes=L, clip_values=(0.0, 1.0))
    >>> attack = MultiLabelCW(classifier, lambda_init=10.0, max_iter=100)
    >>> x_adv = attack.generate(x, y=y_star, mask=mask)      # numpy in, numpy out
    >>> attack.last_result.success                           # mlnb's whole AttackResult

The target, in ART's convention for targeted attacks (``y`` holds the labels wanted): ``y`` ``(N, L)`` in
{0, 1} is the label *set* wanted, the paper's ``y*`` (Sec. II); ``mask`` ``(N, L)`` bool, optional, marks the
labels ``y`` constrains (``A ∪ B``; default every label: the classifier must then predict exactly ``y``),
the others are free (``C``). The clean labels are the classifier's own predictions at ``x`` (logit >= 0,
probability >= 0.5), or ``y_clean=`` when given (the ground truth, say). So ``A = mask & (y != y_clean)``
(labels to flip) and ``B = mask & (y == y_clean)`` (labels to keep), and ``generate`` returns exactly
``mlnb.attacks.<name>(classifier.model, x, y_clean, A, B, **params).x_adv`` as a numpy array.

The classifier's images are in ``[0, 1]`` (``clip_values`` None or ``(0, 1)``); its ``preprocessing``
(mean, std) and PyTorch preprocessing defences are part of the attacked function (ART's
``_predict_framework``, which ART's own PyTorch attacks call); postprocessing defences are refused (they act
on numpy outputs, outside the gradient). ``channels_first=False`` classifiers take ``(N, H, W, C)`` arrays.

ART is imported with this module, never by ``import mlnb``; without it the module still imports
(:data:`ART_AVAILABLE` is False) and making an attack raises an ``ImportError`` naming ``pip install mlnb[art]``.

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from . import validate as V
from .models import model_dtype
from .attacks import ATTACKS, check_params
from .target import Target

try:
    from art.attacks.attack import EvasionAttack as _EvasionAttack
    from art.estimators.classification import PyTorchClassifier as _PyTorchClassifier
    ART_AVAILABLE = True
    _IMPORT_ERROR: ImportError | None = None
except ImportError as err:  # the optional extra is not installed: the classes below explain at construction
    _EvasionAttack, _PyTorchClassifier = object, None
    ART_AVAILABLE = False
    _IMPORT_ERROR = err

__all__ = ["ART_AVAILABLE", "art_classifier", "MultiLabelAttack", "MultiLabelFGS", "MultiLabelFG", "MultiLabelCW",
           "MultiLabelDeepFool", "MultiLabelRankI", "MultiLabelRankII", "ART_ATTACKS"]


class _ClassifierLogits(torch.nn.Module):
    """The ART classifier as the ``(N, C, H, W) -> (N, L)`` logits module that ``mlnb``'s attacks take:
    its preprocessing, then its model (transposed to ``(N, H, W, C)`` first for a channels-last classifier)."""

    def __init__(self, classifier) -> None:
        super().__init__()
        self.classifier = classifier  # not an nn.Module: not registered, so .eval() leaves the user's model alone
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.classifier.channels_first:
            x = x.permute(0, 2, 3, 1)
        logits, _ = self.classifier._predict_framework(x)  # preprocessing with gradients, the model in eval mode
        return logits


def _check_classifier(classifier) -> None:
    if _PyTorchClassifier is None or not isinstance(classifier, _PyTorchClassifier):
        raise TypeError(f"classifier must be an art.estimators.classification.PyTorchClassifier, got "
                        f"{type(classifier).__name__}: wrap the model with PyTorchClassifier(model, loss="
                        f"torch.nn.BCEWithLogitsLoss(), input_shape=..., nb_classes=L, clip_values=(0.0, 1.0))")
    clip = classifier.clip_values
    if clip is not None and not (np.all(np.asarray(clip[0]) == 0) and np.all(np.asarray(clip[1]) == 1)):
        raise ValueError(f"the classifier's clip_values are {clip!r}, but mlnb's attacks work on images in [0, 1]: "
                         f"build the classifier with clip_values=(0.0, 1.0) and put any scaling into its "
                         f"preprocessing=(mean, std)")
    if classifier.postprocessing_defences:
        raise ValueError("the classifier has postprocessing defences, which act on numpy outputs outside the "
                         "gradient: attack a PyTorchClassifier built without postprocessing_defences")


def art_classifier(model: torch.nn.Module, input_shape: tuple[int, ...], num_labels: int, **kwargs):
    """The ART ``PyTorchClassifier`` an ART user builds around a multi-label model ``(N, C, H, W) -> (N, L)``
    logits: ``PyTorchClassifier(model, loss=BCEWithLogitsLoss(), input_shape=input_shape, nb_classes=num_labels,
    clip_values=(0.0, 1.0), device_type=<the model's device>, **kwargs)``.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """
    if not ART_AVAILABLE:
        raise ImportError(f"art_classifier needs the Adversarial Robustness Toolbox: pip install mlnb[art]; importing "
                          f"it failed with: {_IMPORT_ERROR}")
    V.check_eval_model(model)
    V.check_positive("num_labels", num_labels, integer=True)
    if num_labels < 2:
        raise ValueError(f"ART's PyTorchClassifier needs nb_classes >= 2, got num_labels={num_labels}: attack a "
                         f"one-label model with mlnb.attacks directly (they take any L >= 1)")
    param = next(model.parameters(), None)
    kwargs.setdefault("clip_values", (0.0, 1.0))
    kwargs.setdefault("device_type", "gpu" if param is not None and param.device.type == "cuda" else "cpu")
    return _PyTorchClassifier(model, loss=torch.nn.BCEWithLogitsLoss(), input_shape=tuple(input_shape),
                              nb_classes=int(num_labels), **kwargs)


def _labels(name: str, a, shape: tuple[int, int]) -> torch.Tensor:
    """A ``(N, L)`` {0, 1} array as a bool tensor, with a message naming ``name`` otherwise."""
    arr = np.asarray(a)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (one row per image, one column per label), got "
                         f"{arr.shape}: for a label set pass a 0/1 vector per image, not class indices")
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold 0/1 (or bool) labels, got values such as {arr[~np.isin(arr, (0, 1))][:3]}"
                         f": threshold probabilities at 0.5 first")
    return torch.from_numpy(arr.astype(bool))


class MultiLabelAttack(_EvasionAttack):
    """An ART ``EvasionAttack`` running ``mlnb.attacks.<name>`` on an ART ``PyTorchClassifier`` (see the
    module docstring for the target and the classifier it accepts). ``params`` are the functional
    attack's keywords (names checked here by :func:`mlnb.attacks.check_params`); they are also ART
    ``attack_params`` (``set_params``, ``repr``). ``verbose`` shows one tqdm bar per call.

    ``generate(x, y, mask=None, y_clean=None)`` -> ``x_adv`` (numpy, the dtype and layout of ``x``);
    ``last_result`` holds ``mlnb``'s :class:`~mlnb.attacks.AttackResult` of the last call.

    Introduced in notebooks/02_baselines_fgs_fg.ipynb.
    """

    name: str = ""  # the key of mlnb.attacks.ATTACKS
    attack_params: list[str] = []  # filled per subclass: ART's own, "verbose", then the kernel's settings
    _estimator_requirements = (_PyTorchClassifier,) if ART_AVAILABLE else ()

    @classmethod
    def kernel_params(cls) -> dict:
        """The kernel's tunable settings and their defaults."""
        signature = inspect.signature(ATTACKS[cls.name]).parameters
        return {k: p.default for k, p in signature.items()
                if p.kind is p.KEYWORD_ONLY and k not in ("generator", "progress")}

    def __init__(self, classifier, *, verbose: bool = True, **params) -> None:
        if not ART_AVAILABLE:
            raise ImportError(f"{type(self).__name__} needs the Adversarial Robustness Toolbox: pip install mlnb[art] "
                              f"(or pip install 'adversarial-robustness-toolbox>=1.20'); importing it failed with: "
                              f"{_IMPORT_ERROR}")
        if not self.name:
            raise TypeError("MultiLabelAttack is the base class: use MultiLabelFGS, MultiLabelFG, MultiLabelCW, "
                            "MultiLabelDeepFool, MultiLabelRankI or MultiLabelRankII")
        _check_classifier(classifier)
        check_params(self.name, params)
        self.verbose = verbose
        for key, value in {**self.kernel_params(), **params}.items():
            setattr(self, key, value)
        super().__init__(estimator=classifier)
        self._targeted = True
        self.last_result = None

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in ["verbose", *self.kernel_params()])
        return f"{type(self).__name__}(estimator={type(self.estimator).__name__}, targeted=True, {shown})"

    def _check_params(self) -> None:
        super()._check_params()
        if not isinstance(self.verbose, bool):
            raise ValueError(f"verbose must be a bool, got {self.verbose!r}")
        if not self.targeted:
            raise ValueError(f"{type(self).__name__} is a targeted attack: pass the label set wanted as y")
        check_params(self.name, {k: getattr(self, k) for k in self.kernel_params()})  # set_params' values too

    def target(self, x: np.ndarray, y, mask=None, y_clean=None) -> Target:
        """The :class:`~mlnb.target.Target` that ``generate`` attacks (clean labels, ``A``, ``B``)."""
        n, L = x.shape[0], int(self.estimator.nb_classes)
        y_star = _labels("y", y, (n, L))
        constrained = torch.ones(n, L, dtype=torch.bool) if mask is None else _labels("mask", mask, (n, L))
        if y_clean is None:
            with torch.no_grad():
                clean = _ClassifierLogits(self.estimator)(self._tensor(x)).cpu() >= 0
        else:
            clean = _labels("y_clean", y_clean, (n, L))
        A, B = constrained & (y_star != clean), constrained & (y_star == clean)
        nothing = (~A.any(1)).nonzero().flatten().tolist()
        if nothing:
            raise ValueError(f"images {nothing[:10]} are already in the state y asks for (no label of the mask to "
                             f"flip from the clean labels): leave them out, or change y or mask")
        return Target(clean, A, B).to(self.estimator.device)

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        """``x`` on the classifier's device in its model's dtype (float32 for a float32 model), NCHW."""
        t = torch.as_tensor(np.asarray(x), device=self.estimator.device)
        t = t.to(model_dtype(self.estimator.model) if t.is_floating_point() else torch.float32)
        return t if self.estimator.channels_first else t.permute(0, 3, 1, 2)

    def generate(self, x: np.ndarray, y: np.ndarray | None = None, mask: np.ndarray | None = None,
                 y_clean: np.ndarray | None = None, **kwargs) -> np.ndarray:
        """Targeted multi-label adversarial examples for ``x`` (``(N, C, H, W)`` in ``[0, 1]``, or ``(N, H, W,
        C)`` for a channels-last classifier): the classifier's labels become ``y`` on ``mask`` (Eq. 4).

        :param x: the images, a numpy array.
        :param y: ``(N, L)`` 0/1, the label set wanted (``y*``); required.
        :param mask: ``(N, L)`` bool, the labels ``y`` constrains; default every label.
        :param y_clean: ``(N, L)`` 0/1, the clean labels; default the classifier's predictions at ``x``.
        :return: the adversarial images, the shape, layout and dtype of ``x``.
        """
        if kwargs:
            raise TypeError(f"unexpected keyword(s) {sorted(kwargs)}: generate takes x, y, mask and y_clean")
        if y is None:
            raise ValueError("y is required: the label set wanted, a (N, L) 0/1 array (this attack is targeted)")
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"x must be a batch of images, (N, C, H, W) (or (N, H, W, C) for a channels-last "
                             f"classifier), got shape {x.shape}: add the batch axis with x[None]")
        if int(np.prod(x.shape[1:])) != int(np.prod(self.estimator.input_shape)):  # the layout may differ (NHWC)
            raise ValueError(f"x holds images of shape {x.shape[1:]} but the classifier was built for input_shape="
                             f"{tuple(self.estimator.input_shape)}: pass images of that shape (or rebuild the "
                             f"classifier with this input_shape)")
        xt = self._tensor(x)
        V.check_images(xt, "x")
        target = self.target(x, y, mask, y_clean)
        params = {k: getattr(self, k) for k in self.kernel_params()}
        self.last_result = ATTACKS[self.name](_ClassifierLogits(self.estimator), xt, target, progress=self.verbose,
                                              **params)
        out = self.last_result.x_adv
        out = out if self.estimator.channels_first else out.permute(0, 2, 3, 1)
        return out.detach().cpu().numpy().astype(x.dtype if x.dtype.kind == "f" else np.float32, copy=False)


def _door(cls_name: str, name: str, summary: str) -> type:
    doc = (f"ART door to ``mlnb.attacks.{name}``: {summary} ``generate(x, y, mask=None, y_clean=None)`` as "
           f":class:`MultiLabelAttack`.\n\n    Introduced in notebooks/02_baselines_fgs_fg.ipynb.\n    ")
    cls = type(cls_name, (MultiLabelAttack,), {"name": name, "__doc__": doc, "__module__": __name__})
    base = list(_EvasionAttack.attack_params) if ART_AVAILABLE else []
    cls.attack_params = base + ["verbose"] + list(cls.kernel_params())
    return cls


MultiLabelFGS = _door("MultiLabelFGS", "fgs", "targeted multi-label Fast Gradient Sign (Sec. IV-C).")
MultiLabelFG = _door("MultiLabelFG", "fg", "targeted multi-label Fast Gradient (Sec. IV-C).")
MultiLabelCW = _door("MultiLabelCW", "ml_cw", "ML-CW, Carlini-Wagner for label sets (Sec. III-B1, Eq. 4-5).")
MultiLabelDeepFool = _door("MultiLabelDeepFool", "ml_dp", "ML-DP, multi-label DeepFool (Algorithm 1, Eq. 6-7).")
MultiLabelRankI = _door("MultiLabelRankI", "rank1", "Rank I, the ranking attack of Sec. III-C1 (Eq. 9).")
MultiLabelRankII = _door("MultiLabelRankII", "rank2", "Rank II, Rank I plus Eq. (10) (Sec. III-C2, Eq. 11).")

ART_ATTACKS: dict[str, type] = {c.name: c for c in (MultiLabelFGS, MultiLabelFG, MultiLabelCW, MultiLabelDeepFool,
                                                     MultiLabelRankI, MultiLabelRankII)}
