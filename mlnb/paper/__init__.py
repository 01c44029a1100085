"""The paper's own results: its Tables III-V as data and its Sec. IV-F/G findings as decided checks.

* :mod:`mlnb.paper.tables`: Tables III, IV and V of Song et al. (ICDM 2018) as DataFrames
  (``paper_table``, ``side_by_side``).
* :mod:`mlnb.paper.claims`: the qualitative claims of Sec. IV-F (Table IV) and IV-G (Table V,
  Fig. 1), each decided on per-image records or on a table (``table4_claims``, ``table5_claims``).
* :mod:`mlnb.paper.claims_stats`: the paired bootstrap and the four-state decision behind them.

Import from the modules (``from mlnb.paper.claims import table4_claims``); this file imports nothing.
"""
