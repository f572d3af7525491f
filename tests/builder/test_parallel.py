"""builder.parallel: the progress bar's rate ignores the workers' start-up."""

from __future__ import annotations

import pytest
from fingerprint_pretrain.builder.parallel import progress_bar


def test_progress_rate_starts_at_the_first_update(capsys):
    bar = progress_bar(1000, 0, "add eadset1", True)
    clock = [bar.last_print_t]
    bar._time = lambda: clock[0]
    clock[0] += 15.0  # workers importing pymatgen: the first 32 structures after 15 s
    bar.update(32)
    assert bar.n == 32
    for _ in range(5):  # then 32 structures every 0.5 s: 64 structures/s
        clock[0] += 0.5
        bar.update(32)
    assert bar.format_dict["rate"] == pytest.approx(64.0)
    # the remaining 808 structures at that rate: 12.6 s (was ~12 min with the start-up timed)
    assert (bar.total - bar.n) / bar.format_dict["rate"] == pytest.approx(808 / 64)
    assert bar.format_dict["elapsed"] == pytest.approx(17.5)  # elapsed still counts it
    bar.close()


def test_progress_off_is_none():
    assert progress_bar(10, 0, "x", False) is None
