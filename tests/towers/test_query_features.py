"""The query tower's numeric user features: standardised over finite values, never a column
silently turned into zeros by one infinite value."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from tfmmrec.towers.query import _feature_tables

VOCABULARY = ["user1", "user2", "user3", "user4"]


def numeric_column(values: list[float]) -> np.ndarray:
    users = pd.DataFrame({"user_id": VOCABULARY, "score": values})
    _, table = _feature_tables(VOCABULARY, users, ["score"])
    return table.numpy()[:, 0]


def test_an_infinite_value_reads_as_missing_and_the_others_keep_their_spread(caplog):
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        scores = numeric_column([1.5, 2.5, float("inf"), 3.5])
    assert scores[0] == 0.0 and scores[3] == 0.0  # unknown user; the infinite value
    np.testing.assert_allclose(scores[[1, 2, 4]], [-1.2247449, 0.0, 1.2247449], atol=1e-5)
    assert "user feature score: 1 infinite value(s) read as missing" in caplog.text


def test_missing_values_standardise_as_before():
    scores = numeric_column([30.0, np.nan, 45.0, 60.0])
    np.testing.assert_allclose(scores[1:], [-1.2247449, 0.0, 0.0, 1.2247449], atol=1e-5)


def test_values_near_the_float64_limit_do_not_overflow_the_spread():
    scores = numeric_column([1e308, -1e308, 0.0, 1e308])
    assert np.isfinite(scores).all() and np.ptp(scores[1:]) > 1


def test_a_constant_column_is_zeros_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="tfmmrec"):
        scores = numeric_column([7.0, 7.0, 7.0, 7.0])
    assert not scores.any()
    assert "user feature score has the same value for every user" in caplog.text
