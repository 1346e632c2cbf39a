"""The dedup rules on a plain dict: exact within the horizon, bounded memory."""

from __future__ import annotations

import random

from pipeline.dedup import BUCKET_SECONDS, DedupState, Verdict, fingerprint


def test_exact_within_the_horizon_in_any_order() -> None:
    state = DedupState({}, horizon=3600.0)
    times = [60.0 * i for i in range(55)]  # all within one horizon of each other
    shuffled = times[:]
    random.Random(4).shuffle(shuffled)
    new = []
    for t in shuffled + times:  # every reading twice, the first time out of order
        verdict = state.check("d", t)
        if verdict is Verdict.NEW:
            state.record("d", t)
            new.append(t)
        else:
            assert verdict is Verdict.DUPLICATE
    assert sorted(new) == times
    assert state.newest("d") == times[-1]


def test_older_than_the_horizon_is_not_judged_from_memory() -> None:
    state = DedupState({}, horizon=600.0)
    state.record("d", 1000.0)
    state.record("d", 5000.0)
    assert state.check("d", 1000.0) is Verdict.BEYOND_HORIZON
    assert state.check("d", 4400.0) is Verdict.NEW
    assert state.check("other", 1000.0) is Verdict.NEW


def test_memory_stays_bounded_by_the_horizon() -> None:
    table: dict = {}
    state = DedupState(table, horizon=3600.0)
    for i in range(20_000):
        state.record("d", 60.0 * i)
    buckets = [k for k in table if "|ok|" in k]
    assert len(buckets) <= 3600.0 / BUCKET_SECONDS + 2
    assert sum(len(table[k]) for k in buckets) <= 3600 / 60 + BUCKET_SECONDS / 60


def test_rejected_payloads_are_remembered_by_content_for_the_retention() -> None:
    state = DedupState({}, horizon=600.0, rejected_retention=1200.0)
    payload = {"device_id": "d", "time": 100.0, "temperature": None, "humidity": 40.0}
    refetched = {**payload, "received_at": 999.0}
    print_ = fingerprint(payload)
    assert fingerprint(refetched) == print_
    assert fingerprint({**payload, "humidity": 41.0}) != print_
    state.record_rejected("d", 100.0, print_)
    assert state.rejected_before("d", 100.0, print_)
    state.record("d", 1000.0)
    state.record_rejected("d", 900.0, "other")
    assert state.rejected_before("d", 100.0, print_)  # 900 s behind: within 1200
    state.record("d", 2000.0)
    state.record_rejected("d", 1900.0, "more")
    assert not state.rejected_before("d", 100.0, print_)
