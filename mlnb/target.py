"""The target of a multi-label attack (Sec. II, Table I): one object that carries the clean labels ``y``,
the labels to flip ``A`` and to keep ``B``, everything derived from them, and the one definition of
success used throughout ``mlnb``.

Introduced in notebooks/00_definitions.ipynb.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass
from functools import cached_property
from typing import NamedTuple

import torch

from .validate import check_choice, check_label_matrix, check_target

THRESHOLD = 0.5  # h_i(x) = 1 iff f_i(x) >= 0.5 (Sec. IV-D, Eq. 3b)
LOGIT_THRESHOLD = 0.0  # the same threshold on logits: sigmoid(z) >= 0.5 iff z >= 0
OMEGA_ZERO_CHOICES = ("C", "C-1", "C1", "empty")


class Divisions(NamedTuple):
    """The six cells of Table I and the three ranking sets of Sec. III-A2, each ``(N, L)`` bool."""

    A1: torch.Tensor  # A ∩ Y1   positive, to be flipped off
    Am1: torch.Tensor  # A ∩ Y-1  negative, to be flipped on
    B1: torch.Tensor  # B ∩ Y1   positive, kept
    Bm1: torch.Tensor  # B ∩ Y-1  negative, kept
    C1: torch.Tensor  # C ∩ Y1
    Cm1: torch.Tensor  # C ∩ Y-1
    omega_minus: torch.Tensor  # A1 ∪ B-1: must end up negative (low scores)
    omega_plus: torch.Tensor  # A-1 ∪ B1: must end up positive (high scores)
    omega_zero: torch.Tensor  # the "middle" labels: C, C-1, C1 or empty


def _divisions(y: torch.Tensor, A: torch.Tensor, B: torch.Tensor, omega_zero: str) -> Divisions:
    C = ~(A | B)
    neg = ~y
    cells = dict(A1=A & y, Am1=A & neg, B1=B & y, Bm1=B & neg, C1=C & y, Cm1=C & neg)
    middle = {"C": C, "C-1": cells["Cm1"], "C1": cells["C1"], "empty": torch.zeros_like(C)}[omega_zero]
    return Divisions(**cells, omega_minus=cells["A1"] | cells["Bm1"],
                     omega_plus=cells["Am1"] | cells["B1"], omega_zero=middle)


def _criterion(d: Divisions) -> torch.Tensor:
    out = torch.zeros(d.A1.shape, dtype=torch.int8, device=d.A1.device)
    for mask, value in ((d.A1, -2), (d.Bm1, -1), (d.B1, 1), (d.Am1, 2)):
        out[mask] = value
    return out


@dataclass(frozen=True, eq=False, repr=False)
class Target:
    """What a targeted attack asks of each image (Sec. II): flip the labels of ``A``, keep those of ``B``.

    ``y``, ``A``, ``B``: ``(N, L)`` bool (clean labels, labels to flip, labels to keep; ``A ∩ B = ∅``);
    ``eligible``: ``(N,)`` bool, the images the target applies to (a strategy's rows of ineligible images
    are all-False; default: every image). Validated once, when it is made: ``A`` and ``B`` disjoint and
    ``A`` non-empty on every eligible image (the paper requires ``A ≠ ∅``).

    Everything derived from ``y, A, B`` lives here: ``y_star`` (``y* = y XOR A``), ``constrained``
    (``A ∪ B``), ``C``, ``signs`` (the side each constraint asks for), ``n_constraints``,
    :meth:`divisions` (Table I) and ``y_tau`` (Sec. III-C2). And the **one definition of success**, used
    by the attacks, the metrics, the defenses, the experiment runner, the explorer and the notebooks:
    :meth:`constraints_met` (Eq. 4 at the 0.5 threshold, decided on the logits: ``sigmoid(z) >= 0.5``
    exactly when ``z >= 0``), :meth:`n_satisfied` and :meth:`met` (every constraint holds).

    >>> t = Target(y, A, B)                   # one line from three tensors
    >>> t = random_case(y, generator=g)       # strategies return a Target
    >>> t.met(model(x_adv)), t[t.eligible]    # success per image; the eligible rows

    Introduced in notebooks/00_definitions.ipynb.
    """

    y: torch.Tensor
    A: torch.Tensor
    B: torch.Tensor
    eligible: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_label_matrix(self.y, "y")
        if self.eligible is None:
            object.__setattr__(self, "eligible", torch.ones(self.y.shape[0], dtype=torch.bool, device=self.y.device))
        elif not (isinstance(self.eligible, torch.Tensor) and self.eligible.dtype == torch.bool
                  and tuple(self.eligible.shape) == tuple(self.y.shape[:1])):
            raise ValueError(f"eligible must be a ({self.y.shape[0]},) bool tensor (one flag per image), got "
                             f"{getattr(self.eligible, 'dtype', type(self.eligible).__name__)} of shape "
                             f"{tuple(getattr(self.eligible, 'shape', ()))}: pass the strategy's mask or leave it out")
        check_target(self.y, self.A, self.B, self.eligible)

    @classmethod
    def _trusted(cls, y, A, B, eligible) -> "Target":
        """A Target from tensors already validated (rows of a Target): no second check."""
        t = object.__new__(cls)
        for name, value in (("y", y), ("A", A), ("B", B), ("eligible", eligible)):
            object.__setattr__(t, name, value)
        return t

    # ------------------------------------------------------------------ rows
    def __len__(self) -> int:
        return int(self.y.shape[0])

    def __getitem__(self, rows) -> "Target":
        """The target of some images: ``rows`` is a slice, a 1-D index tensor or list, or an ``(N,)`` bool mask."""
        if isinstance(rows, numbers.Integral) or (isinstance(rows, torch.Tensor) and rows.dim() == 0):
            i = int(rows)
            raise TypeError(f"a Target keeps its image axis: index it with a slice (t[{i}:{i + 1}] for one "
                            "image), an index tensor or a bool mask")
        if rows is None or rows is Ellipsis or isinstance(rows, tuple) or getattr(rows, "ndim", 1) != 1:
            raise TypeError(f"a Target is indexed along its image axis only, with a slice, a 1-D index tensor or list, "
                            f"or an (N,) bool mask; got {type(rows).__name__} {rows!r}")
        return Target._trusted(self.y[rows], self.A[rows], self.B[rows], self.eligible[rows])

    def __iter__(self):
        raise TypeError("a Target is not a tuple: read its fields, t.A, t.B, t.eligible (strategies used to return "
                        "(A, B, eligible); write t = random_case(y) and then t.A, t.B)")

    def index_select(self, keep: torch.Tensor) -> "Target":
        """Rows ``keep`` (an index tensor), as ``torch.index_select`` along the image axis."""
        return Target._trusted(*(t.index_select(0, keep) for t in (self.y, self.A, self.B, self.eligible)))

    def to(self, device) -> "Target":
        return Target._trusted(*(t.to(device) for t in (self.y, self.A, self.B, self.eligible)))

    def __repr__(self) -> str:
        n, L = self.y.shape
        return (f"Target({n} images x {L} labels, {int(self.eligible.sum())} eligible, "
                f"|A| {self.A.sum(1).float().mean():.2f} and |B| {self.B.sum(1).float().mean():.2f} per image)")

    # ------------------------------------------------------------------ derived sets
    @cached_property
    def y_star(self) -> torch.Tensor:
        """The target labels ``y* = y XOR A``, ``(N, L)`` bool."""
        return self.y ^ self.A

    @cached_property
    def constrained(self) -> torch.Tensor:
        """``A ∪ B``: the labels with a constraint in Eq. (4), ``(N, L)`` bool."""
        return self.A | self.B

    @property
    def C(self) -> torch.Tensor:
        """The unconstrained labels ``C = L \\ (A ∪ B)``, ``(N, L)`` bool."""
        return ~self.constrained

    @cached_property
    def n_constraints(self) -> torch.Tensor:
        """``|A| + |B|`` per image, ``(N,)`` int64."""
        return self.constrained.sum(1)

    @cached_property
    def signs(self) -> torch.Tensor:
        """The side each constraint asks for, ``(N, L)`` int8: ``+1`` logit ``>= 0`` (``y*`` positive),
        ``-1`` logit ``< 0``, ``0`` unconstrained (``C``)."""
        return (self.y_star.to(torch.int8) * 2 - 1) * self.constrained

    def divisions(self, omega_zero: str = "C") -> Divisions:
        """Table I's cells and the ranking sets of Sec. III-A2 (see :func:`divisions`)."""
        check_choice("omega_zero", omega_zero, OMEGA_ZERO_CHOICES)
        return _divisions(self.y, self.A, self.B, omega_zero)

    @cached_property
    def y_tau(self) -> torch.Tensor:
        """The criterion vector ``y_τ`` of Sec. III-C2, ``(N, L)`` int8 (see :func:`kendall_criterion`)."""
        return _criterion(_divisions(self.y, self.A, self.B, "C"))

    # ------------------------------------------------------------------ success
    def constraints_met(self, logits: torch.Tensor) -> torch.Tensor:
        """Which constraints of Eq. (4) hold, ``(N, L)`` bool: True where label ``i ∈ A ∪ B`` is on its
        target side of the threshold, ``logit >= 0`` (``F_i >= 0.5``) for a positive ``y*_i``, ``< 0``
        otherwise. ``logits`` ``(N, L)`` float: decide on logits, never on rounded probabilities. A NaN logit
        is on neither side: its constraint does not hold. A logit of exactly 0 (``F_i = 0.5``) is positive, as
        Sec. IV-D's ``h_i = [f_i >= 0.5]`` (Eq. 3b, read alone, is non-strict on both sides)."""
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != tuple(self.y.shape) \
                or not logits.is_floating_point():
            raise ValueError(f"logits must be a float tensor of the target's shape {tuple(self.y.shape)} (N, L), got "
                             + (f"{logits.dtype} of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
                                else type(logits).__name__) + ": pass the model's (N, L) logits as a torch.Tensor")
        return self.constrained & torch.where(self.y_star, logits >= LOGIT_THRESHOLD, logits < LOGIT_THRESHOLD)

    def n_satisfied(self, logits: torch.Tensor) -> torch.Tensor:
        """Constraints of Eq. (4) that hold per image, ``(N,)`` int64."""
        return self.constraints_met(logits).sum(1)

    def met(self, logits: torch.Tensor) -> torch.Tensor:
        """``(N,)`` bool: every label of ``A`` flipped and every label of ``B`` kept (the attack succeeded).
        An image the target does not apply to (``eligible`` False: no constraint) meets it vacuously: count
        success rates over ``t[t.eligible]`` (the attacks accept only eligible images)."""
        return self.n_satisfied(logits) == self.n_constraints

    def flipped(self, logits: torch.Tensor) -> torch.Tensor:
        """Labels of ``A`` flipped per image, ``(N,)`` int64."""
        return (self.constraints_met(logits) & self.A).sum(1)
