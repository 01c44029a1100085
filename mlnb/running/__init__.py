"""Running the notebooks: the command-line jobs around papermill, and what they write afterwards.

* ``python -m mlnb.running.pipeline run``: execute every notebook, render HTML and write
  ``results/index.html`` (:mod:`mlnb.running.pipeline`, what ``make run`` calls).
* ``python -m mlnb.running.sweep``: one notebook over a parameter grid (:mod:`mlnb.running.sweep`).
* :mod:`mlnb.running.report`: ``results/index.html``, the page that links every rendered notebook,
  figure and table of a run.
* ``python -m mlnb.running.readme_results``: the README's results section from a recorded run
  (:mod:`mlnb.running.readme_results`).

Import from the modules; this file imports nothing, so ``python -m mlnb.running.<module>`` runs each
module once.
"""
