"""Every figure of the notebooks, one import away: ``from mlnb.plots import plot_perturbations``.

* ``style``: the shared colours (``PALETTE``, ``ROLE_COLOURS``), ``show`` / ``as_image`` (one image),
  ``magnify`` (Sec. IV-H1) and ``label_bars`` (grouped bars of label probabilities);
* ``images``: a few attacked images: ``plot_scores_before_after``, ``plot_perturbations``,
  ``show_images``, ``label_roles`` (notebooks 02-05), ``case_study`` (Fig. 2) and ``explorer_view``;
* ``histograms``: the target label's probability over many images: ``fig1_histograms`` (Fig. 1)
  and ``defense_histograms`` (Fig. 3);
* ``sweeps``: curves against a swept parameter: ``quality_sweep`` (notebook 09) and ``sweep_plot``.

Functions return the matplotlib ``Figure``; save it with ``mlnb.utils.save_figure``.

Introduced in notebooks/02_baselines_fgs_fg.ipynb.
"""
from .histograms import defense_histograms, fig1_histograms
from .images import case_study, explorer_view, label_roles, plot_perturbations, plot_scores_before_after, show_images
from .style import PALETTE, ROLE_COLOURS, as_image, label_bars, magnify, show
from .sweeps import quality_sweep, sweep_plot

__all__ = ["PALETTE", "ROLE_COLOURS", "as_image", "case_study", "defense_histograms", "explorer_view",
           "fig1_histograms", "label_bars", "label_roles", "magnify", "plot_perturbations",
           "plot_scores_before_after", "quality_sweep", "show", "show_images", "sweep_plot"]
