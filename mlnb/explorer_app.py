"""The explorer's ipywidgets layer: :func:`build_app` wires an image slider, one A / B / C toggle
per label, the attack, its budget and a Run button to the handlers of ``mlnb.explorer`` (which
hold every rule and are tested without a browser) and shows ``mlnb.explorer.render``'s figure.

Introduced in notebooks/10_explorer.ipynb.
"""
from __future__ import annotations

import base64
import threading
from typing import Callable, Mapping

from .explorer import (BUDGET_LIMITS, EPS_ATTACKS, SETS, ExplorerState, budget_range, clamp_budget, describe,
                       render_png, run_attack, select_image, set_attack, toggle_label)
from .presets import ATTACK_NAMES


def build_app(state: ExplorerState, attacks: Mapping[str, Callable] | None = None):
    """The ipywidgets app (a ``VBox``) wired to the handlers of ``mlnb.explorer``; ``app.controls``
    holds the widgets (``image``, ``labels``, ``attack``, ``budget``, ``run``, ``status``,
    ``output``) so a script or test can drive it (``app.controls["run"].click()``).

    The figure is drawn at one fixed size (:func:`mlnb.explorer.render_png`, never a pyplot figure,
    so the inline backend cannot display it outside the app) and shown at that size (the image
    widget has that width, at most the page's, and its height follows, so the box does not stretch
    it). Handlers run one at a time, also when JupyterLab delivers events in several threads.
    Displayed, the app also carries a PNG of its figure (``image/png`` beside the widget view):
    JupyterLab and Voilà show the live widget, a static rendering (nbconvert, ``results/html``)
    the picture.

    Introduced in notebooks/10_explorer.ipynb.
    """
    import ipywidgets as W

    class ExplorerApp(W.VBox):
        def _repr_mimebundle_(self, **kwargs):
            data = super()._repr_mimebundle_(**kwargs)
            if self.controls["output"].value:
                data["image/png"] = base64.b64encode(self.controls["output"].value).decode("ascii")
            return data

    image = W.IntSlider(value=state.index, min=0, max=state.x.shape[0] - 1, description="image")
    labels = {j: W.ToggleButtons(options=list(SETS), value=role, description=name,
                                 style={"button_width": "32px"})
              for j, (name, role) in enumerate(zip(state.label_names, state.roles()))}
    attack = W.Dropdown(options=list(ATTACK_NAMES), value=state.attack, description="attack")
    budget = W.IntSlider(value=state.budget, min=1, max=BUDGET_LIMITS["iter"][1], description="budget")
    run = W.Button(description="Run", button_style="danger")
    status = W.HTML()
    # the figure is shown as PNG bytes in an Image widget, not through an Output widget: capturing
    # display() into an Output widget can leave a headless client (papermill / nbclient) waiting
    output = W.Image(format="png", layout=W.Layout(max_width="100%", height="auto"))
    busy = {"sync": False}
    # JupyterLab may deliver the events of different widgets in threads of their own (kernel subshells):
    # one handler at a time, so the state and the busy flag are never changed by two at once
    lock = threading.RLock()

    def serial(handler):
        def run(*args):
            with lock:
                return handler(*args)
        return run

    def sync(*_):
        busy["sync"] = True
        for j, role in enumerate(state.roles()):
            labels[j].value = role
        # the slider shows what runs: a budget set outside its range (set_attack) is moved into it
        state.budget = clamp_budget(state.attack, state.budget)
        lo, hi = budget_range(state.attack)
        budget.max = max(hi, budget.min)  # then min: the two never cross on the way
        budget.min, budget.max = lo, hi
        budget.value = state.budget
        budget.description = "ε x 255" if state.attack in EPS_ATTACKS else "iterations"
        status.value = describe(state, state.result).replace("&", "&amp;").replace("<", "&lt;")
        busy["sync"] = False
        png, (width, _) = render_png(state, state.result)
        output.layout.width = f"{width}px"  # its drawn width (no stretching by the box); height follows
        output.value = png

    def on_label(j):
        def handler(change):
            if not busy["sync"]:
                toggle_label(state, j, change["new"])
                sync()
        return handler

    def on_run(_):
        try:
            run_attack(state, attacks)
        except ValueError as err:
            status.value = f"<b>cannot run:</b> {str(err).replace('<', '&lt;')}"
            return
        sync()

    image.observe(serial(lambda c: (select_image(state, c["new"]), sync())), names="value")
    attack.observe(serial(lambda c: (set_attack(state, c["new"]), sync())), names="value")
    budget.observe(serial(lambda c: None if busy["sync"] else (set_attack(state, state.attack, c["new"]), sync())),
                   names="value")
    for j, widget in labels.items():
        widget.observe(serial(on_label(j)), names="value")
    run.on_click(serial(on_run))
    app = ExplorerApp([W.HBox([image, attack, budget, run]), W.GridBox(list(labels.values()),
                  layout=W.Layout(grid_template_columns="repeat(2, 1fr)")), status, output])
    app.controls = {"image": image, "labels": labels, "attack": attack, "budget": budget, "run": run,
                    "status": status, "output": output}
    serial(sync)()
    return app
