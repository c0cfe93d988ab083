"""How committed jobs are cut into chunks for the queue."""

from __future__ import annotations

import pytest

from massmailer.dispatch import chunk_length, chunks
from massmailer.jobstore import Dispatch


@pytest.mark.parametrize(
    ("count", "size", "expected"),
    [
        (1, 200, 25),  # a group smaller than MIN_CHUNK stays one chunk
        (100, 200, 25),  # small groups spread over the fleet's slots, 25 at least per chunk
        (400, 200, 50),
        (1600, 200, 200),
        (10_000, 200, 200),  # large groups get full chunks
        (100, 4, 4),  # never more than the configured size
    ],
)
def test_chunk_length_spreads_small_groups_and_fills_large_ones(count, size, expected):
    assert chunk_length(count, size) == expected


def test_chunks_hold_one_priority_each_highest_first_and_cover_every_job():
    jobs = [Dispatch(i, priority=i % 3, seq=0) for i in range(1, 181)]

    cut = list(chunks(jobs, size=200))

    assert all(len({d.priority for d in chunk}) == 1 for chunk in cut)
    assert [chunk[0].priority for chunk in cut] == sorted(
        (chunk[0].priority for chunk in cut), reverse=True
    )
    assert sorted(d.job_id for chunk in cut for d in chunk) == list(range(1, 181))
    assert max(len(chunk) for chunk in cut) == 25  # 60 per priority: chunks of 25, 25 and 10
