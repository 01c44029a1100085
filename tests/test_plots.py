"""mlnb.plots: empty or mismatched inputs raise a ValueError naming the argument and the fix, instead
of ZeroDivisionError, matplotlib's "Number of rows must be a positive integer" or a silently wrong figure."""
from __future__ import annotations

import warnings

import matplotlib
import pandas as pd
import pytest
import torch

from mlnb.plots import case_study, defense_histograms, plot_perturbations, plot_scores_before_after, quality_sweep, show_images

matplotlib.use("Agg")
pytestmark = pytest.mark.unit

N, L = 3, 4


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.fixture
def case():
    g = torch.Generator().manual_seed(0)
    s, x = torch.rand(N, L, generator=g), torch.rand(N, 1, 6, 6, generator=g)
    A = torch.zeros(N, L, dtype=torch.bool)
    A[:, 0] = True
    return s, x, A, ~A, list("abcd")


def test_empty_inputs_name_the_argument(case):
    s, x, A, B, names = case
    with pytest.raises(ValueError, match=r"scores_clean must be a non-empty \(N, L\) tensor.*got \(0, 4\)"):
        plot_scores_before_after(s[:0], s[:0], names, A[:0], B[:0])
    with pytest.raises(ValueError, match="max_images must be >= 1, got 0"):
        plot_scores_before_after(s, s, names, A, B, max_images=0)
    with pytest.raises(ValueError, match="panels is empty: pass at least one panel"):
        defense_histograms({})
    with pytest.raises(ValueError, match=r"x is empty \(shape \(0, 1, 6, 6\)\): pass at least one image"):
        plot_perturbations(x[:0], x[:0])
    with pytest.raises(ValueError, match="images is empty"):
        show_images(x[:0])
    with pytest.raises(ValueError, match="x_advs is empty: pass at least one entry"):
        case_study(x[0], {}, s[0, :2], {}, ["a", "b"], ["A", "B"])


def test_label_names_titles_and_shapes_must_match_the_scores(case):
    s, x, A, B, names = case
    with pytest.raises(ValueError, match="label_names has 1 entries for 3 labels: pass one per label"):
        plot_scores_before_after(torch.rand(1, 3), torch.rand(1, 3), ["a"], A[:1, :3], B[:1, :3])
    with pytest.raises(ValueError, match="titles has 1 entries for 3 images: pass one per image"):
        plot_scores_before_after(s, s, names, A, B, titles=["t"])
    with pytest.raises(ValueError, match="titles has 2 entries for 3 images"):
        plot_perturbations(x, x, titles=["t", "u"])
    with pytest.raises(ValueError, match="titles has 4 entries for 3 images"):
        show_images(x, titles=list("tuvw"))
    with pytest.raises(ValueError, match=r"scores 'ml_cw' has shape \(2, 4\) but must match scores_clean's \(3, 4\)"):
        plot_scores_before_after(s, {"ml_cw": s[:2]}, names, A, B)
    with pytest.raises(ValueError, match=r"^B has shape \(3, 3\)"):
        plot_scores_before_after(s, s, names, A, B[:, :3])
    with pytest.raises(ValueError, match=r"x_adv 'fgs' has shape \(2, 1, 6, 6\) but must match x's"):
        plot_perturbations(x, {"fgs": x[:2]})
    with pytest.raises(ValueError, match=r"afters has the attacks \['fg'\] but x_advs \['fgs'\]"):
        case_study(x[0], {"fgs": x[1]}, s[0, :2], {"fg": s[1, :2]}, ["a", "b"], ["A", "B"])
    with pytest.raises(ValueError, match="roles has 1 entries for 2 chosen labels"):
        case_study(x[0], {"fgs": x[1]}, s[0, :2], {"fgs": s[1, :2]}, ["a", "b"], ["A"])


def test_valid_inputs_still_draw_one_panel_per_image(case):
    s, x, A, B, names = case
    fig = plot_scores_before_after(s, {"ml_cw": s}, names, A, B, y=A, titles=list("xyz"), max_images=2)
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in shown] == ["x", "y"]
    assert len(plot_perturbations(x, {"fgs": x, "fg": x}, titles=list("xyz")).axes) == 3 * 5
    assert len(show_images(x, ncols=2).axes) == 4
    assert len(defense_histograms({"p": {"original": torch.rand(5), "png": torch.rand(5)}}).axes) == 1


def test_quality_sweep_passes_axis_by_keyword():
    """pandas warns that positional arguments of mean are going (FutureWarning, or Pandas4Warning in 3.x)."""
    table = pd.DataFrame({"defense": ["none", "jpeg", "jpeg"], "param": [0, 50, 90], "clean_map": [0.9, 0.8, 0.85],
                          "ml_cw": [1.0, 0.2, 0.6], "rank2": [1.0, 0.4, 0.8]})
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fig = quality_sweep(table, ["ml_cw", "rank2"])
    assert not [w for w in seen if "keyword-only" in str(w.message)], [str(w.message) for w in seen]
    right = fig.axes[1]
    ys = sorted(y for line in right.get_lines() for y in line.get_ydata())
    assert ys == pytest.approx([0.3, 0.7, 1.0])  # mean success over the two attacks, per row
