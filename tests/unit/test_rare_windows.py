"""--min-rare: windows rich in rare targets are added after the corpus-order ones, and only their rare targets count."""
from __future__ import annotations

import torch

from rtn.ingest.corpus import (
    COMMON,
    EXCLUDED,
    RARE,
    RARE_CHOSEN,
    _only_rare,
    _rare_windows,
    class_masks,
)

X, C, R = EXCLUDED, COMMON, RARE


def _windows():
    # 6 windows of 5 predictions; rare targets per window: 1, 0, 3, 1, 2, 0
    return torch.tensor([
        [X, C, R, C, X],
        [X, C, C, C, X],
        [X, R, R, R, X],
        [X, R, C, C, X],
        [X, R, C, R, X],
        [X, C, C, C, X],
    ])


def test_richest_windows_after_the_corpus_order_ones_until_min_rare_is_reached():
    classes = _windows()
    # the first 2 windows hold 1 rare target; 4 more are wanted: window 2 (3) then window 4 (2)
    assert _rare_windows(classes, n_seq=2, min_rare=5).tolist() == [2, 4]
    # ties go to corpus order: with 2 wanted, window 2 alone suffices
    assert _rare_windows(classes, n_seq=2, min_rare=3).tolist() == [2]


def test_no_windows_when_the_corpus_order_ones_suffice_or_none_is_asked():
    classes = _windows()
    assert _rare_windows(classes, n_seq=3, min_rare=4).numel() == 0
    assert _rare_windows(classes, n_seq=1, min_rare=0).numel() == 0


def test_a_corpus_short_of_rare_targets_gives_every_window_that_has_one():
    assert _rare_windows(_windows(), n_seq=1, min_rare=100).tolist() == [2, 3, 4]   # never the rare-free 1 and 5


def test_chosen_windows_count_as_rare_but_not_in_all_or_common():
    natural = _windows()[:2]
    chosen = _only_rare(_windows()[[2, 4]])
    assert chosen.tolist() == [[X, RARE_CHOSEN, RARE_CHOSEN, RARE_CHOSEN, X], [X, RARE_CHOSEN, X, RARE_CHOSEN, X]]
    masks = class_masks(torch.cat([natural, chosen]).reshape(-1))
    assert int(masks["rare"].sum()) == 1 + 5
    assert int(masks["common"].sum()) == 2 + 3          # the chosen windows' common targets are not scored
    assert int(masks["all"].sum()) == 1 + 5             # corpus-order windows only
