"""What every attack shares: the result type, input validation, the model call (bf16 autocast,
channels-last), automatic batch splitting on out-of-memory, the final evaluation and the progress bar.

Private to :mod:`mlnb.attacks`. Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .. import validate as V
from ..utils import run_in_chunks  # the one out-of-memory policy (attacks and runner)
from ..target import Target
from ..metrics import tau_b_kernel

AUTOCAST_CHOICES = (None, torch.bfloat16)  # float16 has no loss scaling here: see validate_attack_inputs


@dataclass
class AttackResult:
    """Per-image output of an attack; every tensor is on ``x.device``.

    * ``x_adv`` ``(N, C, H, W)`` in ``[0, 1]``: the adversarial images (the clean image where the
      attack found nothing better, or where the image was already in the target state).
    * ``scores`` ``(N, L)``: probabilities of the model at ``x_adv`` (float32: they round to exactly
      0 or 1 beyond a logit of about ±17, so decide and rank on ``logits``; float64 for a float64 model).
    * ``logits`` ``(N, L)``: the model's logits at ``x_adv`` (float32, or float64 for a model that returns
      float64: :meth:`Runtime.logits`); success, ``n_satisfied`` and every
      ranking metric are computed from them (logit ``>= 0`` is positive: the 0.5 threshold, exactly).
    * ``success`` ``(N,)`` bool: every label of ``A`` flipped and every label of ``B`` kept at the
      0.5 threshold (``prob >= 0.5`` is positive), computed from ``scores``.
    * ``n_satisfied`` ``(N,)`` int: constraints of Eq. (4) satisfied, out of ``n_constraints = |A| + |B|``.
    * ``iterations`` ``(N,)`` int: optimisation steps (gradient evaluations) used for that image.
    * ``param`` ``(N,)`` float: the λ (ML-CW, Rank I/II) or ε (FGS, FG) of the returned example;
      NaN where no parameter applies (ML-DP, the clean image returned by ML-CW or Rank I/II; FGS and FG
      report the ε = 0 of their grid for it).
    * ``kendall_tau`` ``(N,)`` float: Kendall tau-b between the scores and ``y_tau`` (Sec. III-C2);
      NaN where ``y_tau`` is constant.
    * ``extras``: attack-specific additions (``"n_constraints"``, ``"l2"`` of the perturbation, ...).
    """

    x_adv: torch.Tensor
    scores: torch.Tensor
    logits: torch.Tensor
    success: torch.Tensor
    n_satisfied: torch.Tensor
    iterations: torch.Tensor
    param: torch.Tensor
    kendall_tau: torch.Tensor
    extras: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x_adv.shape[0])


@dataclass
class Runtime:
    """How the model is called: autocast dtype for the forward, channels-last inputs, batch size."""

    model: torch.nn.Module
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    batch_size: int | None = None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits ``(n, L)``: float32, or float64 when the model returns float64 (never rounded down:
        a logit of -1e-50 stays negative); half-precision outputs and autocast's are widened to float32."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast_dtype is None:
            out = self.model(x)
        else:
            with torch.autocast(device_type=x.device.type, dtype=self.autocast_dtype):
                out = self.model(x)
        return out if out.dtype == torch.float64 else out.float()


def as_target(y, A, B) -> Target:
    """The attack's :class:`~mlnb.target.Target`: ``y`` itself when it is one (then ``A`` and ``B`` are
    None and every image must be eligible), else ``Target(y, A, B)``, validated here, once."""
    if isinstance(y, Target):
        if A is not None or B is not None:
            raise TypeError("pass either a Target (attack(model, x, target)) or three tensors "
                            "(attack(model, x, y, A, B)), not both")
        if not bool(y.eligible.all()):
            bad = (~y.eligible).nonzero().flatten().tolist()
            raise ValueError(f"the target does not apply to images {bad[:10]} (eligible is False): attack only the "
                             f"eligible ones, e.g. attack(model, x[t.eligible], t[t.eligible])")
        return y
    if A is None or B is None:
        raise TypeError("pass the target as attack(model, x, y, A, B) with A (labels to flip) and B (labels to "
                        "keep), or as attack(model, x, target) with a mlnb.target.Target")
    return Target(y, A, B)


def setup(model, x, y, A, B, *, batch_size, autocast_dtype, channels_last) -> tuple[Runtime, Target]:
    """Boundary checks shared by every attack: the model, the images, the target (validated once),
    the runtime options. Returns how to call the model and the target."""
    V.check_eval_model(model)
    V.check_images(x, "x")
    if x.requires_grad:
        raise ValueError("x requires grad (it is part of an autograd graph): pass x.detach(); the attacks take "
                         "their own gradients and return tensors outside your graph")
    if not isinstance(y, Target) and A is not None and B is not None:
        for mask, name in ((y, "y"), (A, "A"), (B, "B")):
            V.check_label_matrix(mask, name)
        V.check_same_rows(x=x, y=y, A=A, B=B)
    target = as_target(y, A, B)
    V.check_same_rows(x=x, y=target.y)
    if batch_size is not None:
        V.check_positive("batch_size", batch_size, integer=True)
    if autocast_dtype is torch.float16:
        raise ValueError("autocast_dtype=torch.float16 is not supported: the attacks' gradients span many orders of "
                         "magnitude (λ times a hinge gradient reaches 1e6 and more, a saturated label's is 1e-9) and "
                         "float16 (max 65504, min normal 6e-5) overflows or flushes them to 0 without loss scaling; "
                         "pass autocast_dtype=torch.bfloat16 (float32's range) or None")
    if autocast_dtype not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast_dtype must be None or torch.bfloat16, got {autocast_dtype!r}")
    V.check_annotated("channels_last", channels_last, bool)
    if torch.is_inference_mode_enabled():
        raise ValueError("the attack was called under torch.inference_mode(), where no gradient can be taken: "
                         "call it outside that block (torch.no_grad() is fine: the attacks enable gradients)")
    x1 = x[:1].detach().requires_grad_(True)
    try:
        probe = model(x1)  # one image, with its graph
    except RuntimeError as err:
        dtype = next((t.dtype for t in model.parameters() if t.is_floating_point()), x.dtype)
        if dtype == x.dtype:
            raise
        raise ValueError(f"the model failed on x ({str(err).splitlines()[0]}): x is {x.dtype} but the model's "
                         f"weights are {dtype}; pass x.to({dtype}) or convert the model with model.to({x.dtype})") from err
    V.check_logits(probe, 1, int(target.y.shape[1]))
    check_input_gradient(probe, x1)
    return Runtime(model, autocast_dtype, channels_last, batch_size), target


def check_input_gradient(probe: torch.Tensor, x1: torch.Tensor) -> None:
    """The logits ``probe`` ``(1, L)`` of the image ``x1`` must have a gradient w.r.t. ``x1``: an error where the graph
    does not reach it (a forward under ``torch.no_grad()``, a ``detach``, a non-differentiable defense; the weights
    may still carry a graph), a warning where it is exactly zero (a rounding step such as ``purify.bit_depth``: every
    gradient attack then returns the clean image, which would read as robustness; Athalye et al. 2018)."""
    weights = torch.arange(1, probe.shape[1] + 1, device=probe.device, dtype=probe.dtype)  # no cancelling out
    grad = torch.autograd.grad((probe * weights).sum(), x1, allow_unused=True)[0] if probe.requires_grad else None
    if grad is None:
        raise ValueError("the model's logits do not depend differentiably on x (its forward runs under torch.no_grad() "
                         "or detaches, e.g. a JPEG step), and every attack needs their gradient w.r.t. the input: remove "
                         "that from forward, or wrap a non-differentiable defense with "
                         "mlnb.defenses.DefendedModel(bpda=True)")
    if not bool(grad.any()):
        warnings.warn("the model's logits have a zero gradient w.r.t. the first image (a rounding or quantising step, "
                      "e.g. purify.bit_depth?): gradient attacks cannot move such an image, and their failure would "
                      "read as robustness; wrap the step with mlnb.defenses.DefendedModel(model, defense, bpda=True) "
                      "to attack through it", stacklevel=3)


def finalize(rt: Runtime, x: torch.Tensor, x_adv: torch.Tensor, target: Target, iterations: torch.Tensor,
             param: torch.Tensor, extras: dict) -> AttackResult:
    """Evaluate the model once at ``x_adv`` and derive every reported field from those logits."""
    x_adv = x_adv.clamp(0, 1)

    def evaluate(sl: slice) -> dict:
        with torch.no_grad():
            return {"logits": rt.logits(x_adv[sl])}

    logits = run_in_chunks(x.shape[0], rt.batch_size, x.device, evaluate)["logits"]
    nsat = target.n_satisfied(logits)
    extras = {"n_constraints": target.n_constraints, "l2": (x_adv - x).flatten(1).norm(dim=1),
              "flipped_A": target.flipped(logits), **extras}
    return AttackResult(x_adv=x_adv, scores=torch.sigmoid(logits), logits=logits,
                        success=nsat == target.n_constraints, n_satisfied=nsat,
                        iterations=iterations.to(torch.int64), param=param.float(),
                        kendall_tau=tau_b_kernel(logits, target.y_tau), extras=extras)


def progress_bar(total: int, progress: bool, desc: str):
    """One tqdm bar per attack call (counting image-steps); ``progress=False`` disables it."""
    return tqdm(total=total, disable=not progress, desc=desc, unit="img-step", leave=False)


def select_rows(state, keep: torch.Tensor):
    """The rows ``keep`` (an index tensor) of a per-image state: a tensor, a
    :class:`~mlnb.target.Target`, a dict or a dataclass of them (recursively); None stays None."""
    if state is None:
        return None
    if isinstance(state, (torch.Tensor, Target)):
        return state.index_select(0, keep) if isinstance(state, torch.Tensor) else state.index_select(keep)
    if isinstance(state, dict):
        return {k: select_rows(v, keep) for k, v in state.items()}
    return dataclasses.replace(state, **{f.name: select_rows(getattr(state, f.name), keep)
                                         for f in dataclasses.fields(state)})


def flush_finished(S: dict, out: dict, finished: torch.Tensor, fields: dict[str, str]) -> dict:
    """Active-batch shrinking of a dict state: copy the results of the ``finished`` rows of ``S`` into
    ``out`` (``out[k][rows] = S[v][finished]`` for ``k, v`` in ``fields``, rows located by ``S["idx"]``)
    and return ``S`` without those rows."""
    if not bool(finished.any()):
        return S
    idx = S["idx"][finished]
    for out_key, state_key in fields.items():
        out[out_key][idx] = S[state_key][finished].to(out[out_key].dtype)
    return select_rows(S, (~finished).nonzero().flatten())
