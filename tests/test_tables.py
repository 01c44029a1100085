"""mlnb.paper.tables.side_by_side: one data set of ours against one of the paper's, never a silent mix."""
from __future__ import annotations

import pandas as pd
import pytest

from mlnb.paper.tables import METRICS, paper_table, side_by_side

pytestmark = pytest.mark.unit


def test_two_data_sets_in_ours_are_an_error_that_says_how_to_select_one():
    with pytest.raises(ValueError, match=r"ours holds 2 data sets \(voc2007, voc2012\).*select one.*"
                                         r"ours\.xs\('voc2012', level='dataset'"):
        side_by_side(paper_table(4), paper_table(4))


def test_one_data_set_is_compared_with_the_chosen_paper_data_set():
    ours = paper_table(4, "voc2012")
    both = side_by_side(ours, paper_table(4), paper_dataset="voc2012")
    assert len(both) == 12 and not both.index.duplicated().any()
    assert list(both.index.names) == ["strategy", "attack"]
    pd.testing.assert_frame_equal(both.xs("ours", axis=1, level=1), both.xs("paper", axis=1, level=1))
    mixed = side_by_side(ours, paper_table(4))  # the default paper data set is VOC 2007
    assert mixed.loc[("random", "ml_cw"), ("RMSD", "paper")] == 2.4452
    assert mixed.loc[("random", "ml_cw"), ("RMSD", "ours")] == 2.3928
    assert [c for c, _ in mixed.columns[::2]] == list(METRICS)


def test_unknown_paper_data_set_names_the_valid_ones():
    with pytest.raises(ValueError, match="unknown paper_dataset 'voc2013': choose one of 'voc2007', 'voc2012'"):
        side_by_side(paper_table(4, "voc2007"), paper_table(4), paper_dataset="voc2013")
