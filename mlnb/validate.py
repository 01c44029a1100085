"""Checks at the public boundary: every message names the argument, the problem and the fix.

Kernels call these once on entry; nothing here is called inside an optimisation loop.
"""
from __future__ import annotations

import math
import numbers
import operator
import types
import typing
from typing import Iterable, Sequence

import torch

MAX_LISTED = 5  # how many offending images / labels a message lists before "..."


def _listed(idx) -> str:
    """The first :data:`MAX_LISTED` of ``idx`` (a tensor or a list), with the count of the rest."""
    vals = idx.flatten().tolist() if isinstance(idx, torch.Tensor) else list(idx)
    head = ", ".join(str(v) for v in vals[:MAX_LISTED])
    return head + (f", ... ({len(vals)} in all)" if len(vals) > MAX_LISTED else "")


def check_choice(name: str, value, valid: Iterable) -> None:
    """Raise ``ValueError`` if ``value`` is not one of ``valid``, listing the valid names."""
    valid = list(valid)
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(map(repr, valid))}")


def _python_number(name: str, value, integer: bool) -> None:
    """A NumPy (or other non-Python) number gets a message that says how to pass it."""
    if isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(value, (bool, int, float)):
        want, cast = ("int", "int") if integer else ("int or float", "float")
        raise TypeError(f"{name} must be a Python {want}, got {value!r}: pass {name}={cast}({name})")


def check_positive(name: str, value, *, allow_zero: bool = False, integer: bool = False) -> None:
    """Raise if a budget / rate / epsilon is not a finite positive number (or int)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _python_number(name, value, integer)
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if integer and not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        need = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a finite {need} number, got {value!r}: pass e.g. {name}=1")


MAX_SEED = 2**32 - 1  # NumPy's seed range; derived seeds (seed * 10 + k, hashes) stay far inside int64


def check_seed(seed) -> None:
    """A seed: a whole number in ``[0, MAX_SEED]`` (Python or NumPy int, not a bool)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if seed > MAX_SEED:
        raise ValueError(f"seed must be at most {MAX_SEED} (NumPy's seed range), got {seed}: pass a smaller seed")


def check_annotated(name: str, value, annotation) -> None:
    """``value`` fits the plain annotation of a keyword (``int``, ``float``, ``bool``, ``str``, ``None`` and
    unions of them; other annotations are not checked): a ``--param ml_cw.max_iter=abc`` or
    ``rank2.pairwise=false`` (a string) fails here, before any work, with the keyword's name. Also the one
    check of a flag: ``check_annotated("trace", trace, bool)``."""
    kinds = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    plain = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),  # Python numbers, as the attacks take
             float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
             bool: lambda v: isinstance(v, bool), str: lambda v: isinstance(v, str),
             type(None): lambda v: v is None}
    if not all(k in plain for k in kinds):
        return
    if not any(plain[k](value) for k in kinds):
        if int in kinds or float in kinds:
            _python_number(name, value, float not in kinds)
        want = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
        raise TypeError(f"{name} must be {want}, got {type(value).__name__} {value!r}")


def check_int(name: str, value, minimum: int = 1) -> None:
    """A whole-number budget ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        _python_number(name, value, True)
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}: pass e.g. {name}={max(minimum, 10)}")


def check_int_range(name: str, value, lo: int, hi: int) -> int:
    """A whole number in ``[lo, hi]`` (a JPEG quality, a bit depth, a bin count); returns it."""
    if isinstance(value, bool) or not isinstance(value, int):
        _python_number(name, value, True)
        raise TypeError(f"{name} must be an int in [{lo}, {hi}], got {type(value).__name__} {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must lie in [{lo}, {hi}], got {value}: pass e.g. {name}={hi}")
    return value


def check_images(x, name: str = "x") -> None:
    """Images: a float tensor ``(N, C, H, W)`` with finite values in ``[0, 1]``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must be 4-D (N, C, H, W), got shape {tuple(x.shape)}: "
                         f"add a batch axis with {name}.unsqueeze(0) for a single image")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a float tensor in [0, 1], got dtype {x.dtype}: "
                         f"use {name}.float() / 255 for 8-bit images")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): pass at least one image")
    bad = ~torch.isfinite(x)
    if bad.any():
        imgs = bad.flatten(1).any(1).nonzero().flatten()
        raise ValueError(f"{name} contains NaN or Inf in images {_listed(imgs)}: clean the inputs first")
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} must lie in [0, 1], found values in [{lo:.4g}, {hi:.4g}]: "
                         f"scale 0-255 images by 1/255 and move normalisation into the model")


def check_finite(t: torch.Tensor, name: str, what: str = "logits") -> None:
    """Scores or logits must be finite: NaN would read as a decision (``NaN >= 0`` is False)."""
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf: the metrics need finite {what}")


def check_label_matrix(y, name: str = "y", num_labels: int | None = None) -> None:
    """Labels: a bool tensor ``(N, L)`` with ``L >= 1`` (``num_labels`` if given)."""
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, L), got {type(y).__name__}")
    if y.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, L), got shape {tuple(y.shape)}")
    if y.shape[1] == 0:
        raise ValueError(f"{name} has no label column (shape {tuple(y.shape)}): pass at least one label per image")
    if y.dtype != torch.bool:
        if y.is_floating_point() or y.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8):
            vals = torch.unique(y).tolist()
            hint = (f"labels look like the paper's ±1: pass {name} > 0" if set(vals) == {-1, 1}
                    else f"pass a bool mask ({name} > 0.5 for 0/1 values)" if set(vals) <= {0, 1}
                    else f"labels must be binary: pass a bool mask (e.g. {name} > 0.5)")
            raise ValueError(f"{name} must be a bool tensor (N, L), got dtype {y.dtype} with values "
                             f"{vals[:6]}: {hint}")
        raise ValueError(f"{name} must be a bool tensor (N, L), got dtype {y.dtype}")
    if num_labels is not None and y.shape[1] != num_labels:
        raise ValueError(f"{name} has {y.shape[1]} labels but the model predicts {num_labels}: "
                         f"use label masks with one column per model output")


def check_same_rows(**tensors) -> None:
    """All tensors share the batch size N (first axis)."""
    sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
    if len(set(sizes.values())) > 1:
        listing = ", ".join(f"{k} has {n}" for k, n in sizes.items())
        raise ValueError(f"batch sizes differ ({listing}): pass one row per image in each")


def check_target(y: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                 eligible: torch.Tensor | None = None, *, require_nonempty_a: bool = True) -> None:
    """Validate a target ``(A, B)`` against labels ``y`` (all ``(N, L)`` bool).

    Raises ``ValueError`` naming the images and labels when A and B overlap, when an
    (eligible) image has an empty A, or when shapes / dtypes disagree.
    """
    check_label_matrix(y, "y")
    check_label_matrix(A, "A")
    check_label_matrix(B, "B")
    for name, m in (("A", A), ("B", B)):
        if m.shape != y.shape:
            raise ValueError(f"{name} has shape {tuple(m.shape)} but y has {tuple(y.shape)}: "
                             f"masks need one row per image and one column per label")
    overlap = A & B
    if overlap.any():
        rows, cols = overlap.nonzero(as_tuple=True)
        pairs = ", ".join(f"image {r} label {c}" for r, c in zip(rows.tolist()[:MAX_LISTED], cols.tolist()))
        raise ValueError(f"A and B overlap at {pairs}: a label is either flipped (A) or kept (B), "
                         f"never both; remove it from one mask")
    if require_nonempty_a:
        rows = ~A.any(1) if eligible is None else (~A.any(1) & eligible)
        if rows.any():
            raise ValueError(f"A is empty for images {_listed(rows.nonzero().flatten())}: the paper requires "
                             f"A != {{}}; drop those images (use the generator's eligible mask)")


def check_generator(generator, name: str = "generator") -> None:
    """A random choice's source: ``None`` (torch's global generator) or a ``torch.Generator``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{name} must be None or a torch.Generator, got {type(generator).__name__} {generator!r}: "
                        f"pass e.g. {name}=torch.Generator().manual_seed(0)")


def check_label_index(j, num_labels: int, names: Sequence[str] | None = None) -> int:
    """Resolve a label given by index (any integer: Python, NumPy or a 0-d integer tensor) or by name to an
    index in ``range(num_labels)``; ``names``, when given, has one entry per label."""
    if names is not None and len(names) != num_labels:
        raise ValueError(f"names has {len(names)} entries but there are {num_labels} labels: pass one name per "
                         "label column")
    if isinstance(j, str):
        if names is None or j not in names:
            valid = ", ".join(names) if names else "(no label names given: pass an int index)"
            raise ValueError(f"unknown label name {j!r}: choose one of {valid}")
        return list(names).index(j)
    if isinstance(j, bool) or (isinstance(j, torch.Tensor) and (j.dim() != 0 or j.is_floating_point()
                                                               or j.dtype == torch.bool)):
        raise TypeError(f"label index must be an int or a label name, got {type(j).__name__} {j!r}")
    try:
        j = operator.index(j)
    except TypeError:
        raise TypeError(f"label index must be an int or a label name, got {type(j).__name__} {j!r}") from None
    if not 0 <= j < num_labels:
        raise ValueError(f"label index {j} is out of range: there are {num_labels} labels (0..{num_labels - 1})")
    return j


def check_eval_model(model) -> None:
    """The attacked model must be an ``nn.Module`` in eval mode, every submodule included."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    training = [f"{name} ({type(m).__name__})" for name, m in model.named_modules() if m.training and name]
    if model.training or training:
        where = "" if model.training else f" in its submodules {_listed(training)}"
        raise ValueError(f"model is in training mode{where} (dropout / batch-norm statistics would change under "
                         "attack): call model.eval() first")


def check_logits(logits, n: int, num_labels: int | None = None) -> torch.Tensor:
    """The model's output for ``n`` images must be ``(n, num_labels)`` float logits (any number of labels when
    ``num_labels`` is None); returned as is."""
    if (num_labels is not None and isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == n
            and logits.shape[1] != num_labels):
        raise ValueError(f"label count mismatch: the model predicts {logits.shape[1]} labels but the label "
                         f"masks (y, A, B) have {num_labels} columns, so ({n}, {num_labels}) logits were expected: "
                         f"pass masks with one column per model output, or the model trained on these labels")
    if not (isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == n
            and num_labels in (None, logits.shape[1]) and logits.is_floating_point()):
        shape = ((tuple(logits.shape) if logits.is_floating_point() else f"{logits.dtype} {tuple(logits.shape)}")
                 if isinstance(logits, torch.Tensor) else type(logits).__name__)
        raise ValueError(f"model returned {shape} for {n} images but the labels need ({n}, {num_labels or 'L'}) "
                         f"float logits: the model must map (N, C, H, W) images to (N, L) logits (a model with "
                         f"several outputs, e.g. Inception-v3 with aux logits in training mode: call model.eval() or "
                         f"wrap it to return the main logits)")
    return logits
