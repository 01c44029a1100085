"""Unit tests of the explorer's handlers (no browser): label toggling, budgets, run_attack, render, app;
and of the case-study target they tick by default (mlnb.case_study)."""
import matplotlib
import pytest
import torch
from torch import nn

from mlnb import explorer as E
from mlnb.case_study import case_study_sets
from mlnb.explorer_app import build_app

pytestmark = pytest.mark.unit

NAMES = ("person", "cow", "bottle", "sofa", "sheep")


class Linear(nn.Module):
    """A 5-label linear model on 3x4x4 images whose clean image is classified as y."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(5, 48, generator=g) * 0.5)
        self.b = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        return x.flatten(1) @ self.w.t() + self.b


@pytest.fixture
def state():
    model = Linear().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 3, 4, 4, generator=g) * 0.6 + 0.2
    with torch.no_grad():
        logits = model(x)
        model.b -= logits.mean(0)  # centre so that each image has positives and negatives
        y = model(x) > 0
    params = {"ml_cw": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20, "lr": 5e-2},
              "rank2": {"lambda_init": 10.0, "n_search": 2, "max_iter": 20, "lr": 5e-2},
              "fgs": {"eps_max": 20 / 255, "n_eps": 3}}
    return E.make_state(model, x, y, NAMES, attack_params=params)


def test_toggle_keeps_a_and_b_disjoint(state):
    E.toggle_label(state, "person", "A")
    E.toggle_label(state, 1, "A")
    assert state.A == {0, 1} and not state.B
    E.toggle_label(state, "person", "B")
    assert state.A == {1} and state.B == {0}
    E.toggle_label(state, "person", "B")  # second click: back to C
    assert state.A == {1} and not state.B
    E.toggle_label(state, "cow", "C")
    assert not state.A and not state.B
    for j, s in [(0, "A"), (0, "B"), (2, "B"), (2, "A"), (3, "A"), (3, "C"), (4, "B")]:
        E.toggle_label(state, j, s)
        assert not (state.A & state.B)
    assert state.roles() == ["B", "C", "A", "C", "B"]
    t = E.selected_target(state)
    A, B = t.A, t.B
    assert A[0].tolist() == [False, False, True, False, False] and B[0].tolist() == [True, False, False, False, True]
    assert not (A & B).any() and torch.equal(t.y, state.y[state.index:state.index + 1])


def test_bad_inputs_are_clear(state):
    with pytest.raises(ValueError, match="set_name"):
        E.toggle_label(state, 0, "D")
    with pytest.raises(ValueError, match="unknown label name"):
        E.toggle_label(state, "dragon", "A")
    with pytest.raises(ValueError, match="image index"):
        E.select_image(state, 3)
    with pytest.raises(ValueError, match="attack"):
        E.set_attack(state, "pgd")
    with pytest.raises(ValueError, match="A is empty"):
        E.run_attack(state)
    with pytest.raises(ValueError, match="label_names"):
        E.make_state(state.model, state.x, state.y, NAMES[:3])


def test_select_image_clears_selection(state):
    E.toggle_label(state, 0, "A")
    E.select_image(state, 2)
    assert state.index == 2 and not state.A and state.result is None


def test_budget_params():
    assert E.budget_params("fgs", 8, {"n_eps": 3}) == {"n_eps": 3, "eps_max": 8 / 255}
    assert E.budget_params("ml_cw", 30, {"lr": 0.01, "max_iter": 100})["max_iter"] == 30
    assert E.default_budget("fg", {"eps_max": 10 / 255}) == 10
    with pytest.raises(ValueError, match="budget"):
        E.budget_params("ml_cw", 0)


def test_case_study_sets():
    y = torch.tensor([True, False, True, False, False])
    a, b = case_study_sets(y, names=NAMES, prefer_a=("person", "cow"), prefer_b=("bottle", "sofa"))
    assert (a, b) == ([0, 1], [2, 3])
    s = torch.tensor([0.9, 0.2, 0.7, 0.4, 0.1])
    a, b = case_study_sets(y, s)
    assert a == [0, 3] and b == [2, 1]
    with pytest.raises(ValueError, match=">= 2 positive"):
        case_study_sets(torch.tensor([True, False, False]))
    # preferred sets sharing a label cannot be a target (A and B are disjoint): the score order is used
    a, b = case_study_sets(y, s, NAMES, prefer_a=("person", "cow"), prefer_b=("person", "sofa"))
    assert (a, b) == ([0, 3], [2, 1])


def test_budgets_outside_the_slider_are_moved_into_it(state):
    """The slider shows what runs: a preset's max_iter=500 starts at 300, eps_max=0.001 at 1 (not 0)."""
    assert E.default_budget("ml_cw", {"max_iter": 500}) == 300 and E.default_budget("fgs", {"eps_max": 0.001}) == 1
    state.attack_params["fgs"]["eps_max"] = 64 / 255
    E.set_attack(state, "fgs")
    assert state.budget == 32
    E.set_attack(state, "ml_cw", 500)  # an explicit budget beyond the slider: the app moves it into range
    c = build_app(state).controls
    assert state.budget == c["budget"].value == 300 and "budget 300" in c["status"].value
    c["attack"].value = "fgs"
    assert c["budget"].max == 32 and state.budget == c["budget"].value
    E.select_image(state, __import__("numpy").int64(1))  # a NumPy index, as from np.argmax
    assert state.index == 1 and type(state.index) is int


@pytest.mark.parametrize("attack", ["ml_cw", "rank2", "fgs"])
def test_run_attack_on_tiny_model(state, attack):
    E.select_image(state, 0)
    pos = state.y[0].nonzero().flatten().tolist()
    assert pos, "fixture: image 0 has a positive label"
    E.toggle_label(state, pos[0], "A")  # hide one positive, keep the rest
    for j in range(5):
        if j != pos[0]:
            E.toggle_label(state, j, "B")
    E.set_attack(state, attack)
    res = E.run_attack(state)
    assert state.result is res
    assert res.x_adv.shape == (3, 4, 4) and 0 <= res.x_adv.min() and res.x_adv.max() <= 1
    assert res.before.shape == res.after.shape == (5,)
    assert torch.allclose(res.after, torch.sigmoid(state.model(res.x_adv[None]))[0], atol=1e-5)
    assert res.A == (pos[0],) and len(res.B) == 4 and 0 <= res.n_satisfied <= 5
    assert res.rmsd >= 0
    if attack == "ml_cw":  # an easy target on a linear model: ML-CW reaches it
        assert res.success and res.after[pos[0]] < 0.5
    else:  # Rank II orders labels rather than thresholding them; FGS is one step: at least it moves down
        assert res.after[pos[0]] < res.before[pos[0]]
    assert "A = {" in E.describe(state, res)


def test_render_and_app_headless(state):
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    E.default_selection(state)
    fig = E.render(state)
    assert len(fig.axes) >= 2
    plt.close(fig)
    app = build_app(state)
    c = app.controls
    c["labels"][4].value = "A"  # a click on a label's toggle goes through toggle_label
    assert 4 in state.A and 4 not in state.B
    c["run"].click()
    assert state.result is not None and "constraints" in c["status"].value
    c["image"].value = 1
    assert state.index == 1 and not state.A and all(w.value == "C" for w in c["labels"].values())
    c["run"].click()  # A empty: reported in the status line, not raised
    assert "cannot run" in c["status"].value
    plt.close("all")


def _png_size(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_figure_has_one_size_before_and_after_run(state):
    """The first figure (no result: two panels of four) is not cropped to another size than the
    figure after a Run, and the app's image widget shows it at exactly that size (issue 16)."""
    matplotlib.use("Agg")
    E.default_selection(state)
    before, size = E.render_png(state)
    E.run_attack(state)
    after, size_after = E.render_png(state, state.result)
    assert _png_size(before) == _png_size(after) == size == size_after
    app = build_app(state)
    out = app.controls["output"]
    assert (out.layout.width, out.layout.height) == (f"{size[0]}px", "auto")
    assert _png_size(out.value) == size


def test_app_draws_no_pyplot_figure(state, monkeypatch):
    """After every widget event the inline backend displays each open pyplot figure; JupyterLab
    handles events in threads of their own, so a pyplot figure one handler is drawing was shown,
    half-drawn, outside the app after another's (issue 16). The app's figures are never pyplot's."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    seen = []
    original = E.render

    def spy(*args, **kwargs):
        fig = original(*args, **kwargs)
        seen.append(plt.get_fignums())  # what another thread's flush would display right now
        return fig

    monkeypatch.setattr(E, "render", spy)
    app = build_app(state)
    c = app.controls
    for j, role in [(0, "A"), (1, "B"), (0, "B"), (2, "A"), (3, "C")]:
        c["labels"][j].value = role
    c["run"].click()
    c["attack"].value = "fgs"
    c["budget"].value = 4
    c["image"].value = 2
    assert len(seen) >= 9 and all(nums == [] for nums in seen) and plt.get_fignums() == []


def test_displayed_app_carries_a_picture_of_itself(state):
    """JupyterLab and Voilà render the widget view; a static export (results/html) the PNG."""
    import base64

    import nbformat

    from mlnb.running.pipeline import WIDGET_VIEW, static_widgets

    matplotlib.use("Agg")
    app = build_app(state)
    bundle = app._repr_mimebundle_()
    assert WIDGET_VIEW in bundle and base64.b64decode(bundle["image/png"]) == app.controls["output"].value
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("app")]
    nb.cells[0].outputs = [{"output_type": "display_data", "metadata": {}, "data": dict(bundle)},
                           {"output_type": "display_data", "metadata": {},
                            "data": {WIDGET_VIEW: bundle[WIDGET_VIEW], "text/plain": "Button()"}}]
    nb.metadata["widgets"] = {"state": {}}
    assert static_widgets(nb) == 2 and "widgets" not in nb.metadata
    first, second = (o["data"] for o in nb.cells[0].outputs)
    assert WIDGET_VIEW not in first and first["image/png"] == bundle["image/png"]
    assert WIDGET_VIEW not in second and "make explore" in second["text/html"]


def test_rendered_notebook_needs_no_network(tmp_path):
    """results/html pages load nothing from a CDN: MathJax comes from a copy next to them, referenced
    relatively; a widget shows its picture; every file follows the umask (issue 16)."""
    import os
    import re

    import nbformat

    from mlnb.running.pipeline import WIDGET_VIEW, render_html

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 10 · t\n\nthe budget $\\varepsilon \\times 255$"),
                nbformat.v4.new_code_cell("app")]
    nb.cells[1].outputs = [nbformat.v4.new_output("display_data", data={
        WIDGET_VIEW: {"version_major": 2, "version_minor": 0, "model_id": "x"}, "text/plain": "VBox()",
        "image/png": "iVBORw0KGgo="})]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    (tmp_path / "executed").mkdir()
    nbformat.write(nb, tmp_path / "executed" / "10_t.ipynb")
    old = os.umask(0o027)
    try:
        (page,) = render_html(tmp_path / "executed", tmp_path / "html")
    finally:
        os.umask(old)
    text = page.read_text()
    sources = re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="([^"]+)"', text)
    assert sources and not [s for s in sources if re.match(r"(https?:)?//", s)], sources
    assert "../assets/mathjax/MathJax.js?config=" in text and (tmp_path / "assets" / "mathjax" / "MathJax.js").is_file()
    assert "data:image/png;base64,iVBORw0KGgo=" in text and "widget-view+json" not in text
    for path in [page, tmp_path / "assets" / "mathjax" / "MathJax.js", tmp_path / "assets" / "mathjax" / "jax"]:
        assert path.stat().st_mode & 0o777 == (0o750 if path.is_dir() else 0o640), path
