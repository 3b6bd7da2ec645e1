"""The benchmarks' table arithmetic (benchmarks/common.py): ratios are ours / baseline and stay
readable when tiny; a zero baseline gives no ratio rather than a division error."""
from __future__ import annotations

from benchmarks.common import Row, format_ratio, markdown_table


def test_ratio_is_ours_over_baseline_and_none_for_a_zero_baseline() -> None:
    assert Row("c", "m", baseline=200.0, ours=50.0, better="lower").ratio == 0.25
    assert Row("c", "m", baseline=0.0, ours=3.0, better="lower").ratio is None


def test_small_ratios_keep_two_significant_digits() -> None:
    assert format_ratio(6.6) == "6.60×"
    assert format_ratio(0.00083) == "0.00083×"
    assert format_ratio(0.0) == "0×"


def test_markdown_table_has_one_line_per_row_and_says_which_way_is_better() -> None:
    rows = [
        Row("storm", "hub CPU seconds", 24.01, 0.02, "lower", 2),
        Row("storm", "requests reaching the hub", 0, 0, "lower", 0),
    ]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 4
    assert lines[2] == "| storm | hub CPU seconds | 24.01 | 0.02 | 0.00083× (lower is better) |"
    assert lines[3].endswith("| 0 | 0 | n/a |")


def test_an_infinite_time_reads_never_and_has_no_ratio() -> None:
    row = Row("burst", "time until ready, p99 (s)", float("inf"), 385.0, "lower", 0)
    assert row.ratio is None
    assert markdown_table([row]).splitlines()[2] == (
        "| burst | time until ready, p99 (s) | never | 385 | n/a |"
    )
