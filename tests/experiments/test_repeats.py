"""experiments/repeats.py: the protocol's statistics (paired ratios, median and min-max band, the "≈ 1" rule)."""
from __future__ import annotations

import math

import pytest

from experiments.repeats import (alternate, band, format_band, paired_ratios, ratio_band, repeat_fits, repeat_name,
                                 scaled_band, split_repeat)


def test_paired_ratios_use_the_runs_of_the_same_repeat():
    ours = {1: 10.0, 2: 12.0, 3: 11.0, 4: 50.0}
    theirs = {1: 10.0, 2: 10.0, 3: 12.0}  # repeat 4 has no partner: left out
    assert paired_ratios(ours, theirs) == [1.0, 1.2, 11.0 / 12.0]
    b = ratio_band(ours, theirs)
    assert (b.median, b.low, b.high, b.n) == (1.0, 11.0 / 12.0, 1.2, 3)
    assert b.contains_one and format_band(b) == "≈ 1 (0.92-1.20)"


def test_a_band_off_one_shows_its_median_and_a_single_value_says_n1():
    b = band([0.70, 0.76, 0.73])
    assert not b.contains_one and format_band(b) == "0.73 (0.70-0.76)"
    assert format_band(band([0.94])) == "0.94 (n=1)" and not band([1.0]).contains_one  # one run: no band
    assert format_band(None) == "—" and band([None, math.nan, "x"]) is None


def test_bands_against_a_fixed_number_and_bad_denominators():
    b = scaled_band([3.6, 3.8, 3.9], 3.7)
    assert b.low == pytest.approx(3.6 / 3.7) and b.contains_one
    assert scaled_band([1.0], 0) is None and paired_ratios({1: 1.0}, {1: 0.0}) == []


def test_repeat_names_and_the_alternating_order():
    assert split_repeat("llama3_8b-badam-rep2") == ("llama3_8b-badam", 2)
    assert split_repeat("llama3_8b-badam") == ("llama3_8b-badam", None)
    assert repeat_name("x", 3) == "x-rep3"
    with pytest.raises(ValueError, match="start at 1"):
        repeat_name("x", 0)
    assert alternate(["A", "B"], 3) == [(1, "A"), (1, "B"), (2, "A"), (2, "B"), (3, "A"), (3, "B")]
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        alternate(["A"], 0)


def test_a_repeat_starts_only_if_it_fits_before_the_deadline_at_the_last_pace():
    assert repeat_fits(500.0, None, 480.0)  # the first repeat always runs: no pace known
    assert repeat_fits(300.0, 180.0, 480.0) and not repeat_fits(301.0, 180.0, 480.0)
    assert repeat_fits(1e6, 180.0, None)
