"""Permutation p-values of the modularity test are calibrated on null data (hundreds of Louvain runs: a minute or more).

    pytest tests/integration/test_modularity_calibration.py
"""
from __future__ import annotations

import numpy as np

from rtn.analyses import modularity
from rtn.analyses.modularity import ModularityConfig


def null_data_p_values(n_repeats: int, n_null: int, size: int = 6) -> np.ndarray:
    """Returns the permutation p-value of a random group on fresh independent data, per repeat."""
    p_values = np.empty(n_repeats)
    config = ModularityConfig(n_null=n_null)
    for repeat in range(n_repeats):
        rng = np.random.default_rng(1000 + repeat)
        acts = rng.standard_normal((30, 40))
        group = np.sort(rng.choice(40, size, replace=False))
        weights = np.abs(modularity.correlation_weights(acts[:, group]))
        q = modularity.modularity_q(weights, modularity.louvain_labels(weights), 1.0)
        p_values[repeat] = modularity.permutation_p_value(q, modularity.null_q(acts, size, n_null, rng, config))
    return p_values


def test_p_values_are_calibrated_on_null_data_quick():
    # n_null = 19: p <= 0.05 exactly when the group beats all 19 nulls, chance 1/20 under the null.
    # 300 repeats: 15 expected, binomial sd 3.8; [4, 26] is ±3 sd and fails a test twice as liberal.
    p_values = null_data_p_values(300, n_null=19)
    assert 4 <= np.sum(p_values <= 0.05 + 1e-12) <= 26
    assert 0.4 < np.mean(p_values) < 0.6          # uniform on {1/20, ..., 1}: mean 0.525


def test_p_values_are_calibrated_on_null_data_with_100_null_groups():
    # n_null = 100: P(p < 0.05) = P(at most 4 of 100 nulls >= q) = 5/101 under exchangeability.
    p_values = null_data_p_values(300, n_null=100)
    assert 4 <= np.sum(p_values < 0.05) <= 27     # expected 14.9, sd 3.8
