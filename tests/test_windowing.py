"""The job manager's event-time rule, without Kafka or Redis."""

from __future__ import annotations

from pipeline.windowing import decide, expected_windows


def test_first_reading_sets_the_pointer_without_a_job():
    decision = decide(None, 1000.0, window=60, start_time=0)
    assert decision.pointer == 1000.0 and decision.window is None


def test_window_closes_when_delta_reaches_the_window():
    assert decide(1000.0, 1059.0, 60, 0).window is None
    closing = decide(1000.0, 1060.0, 60, 0)
    assert closing.window == (1000.0, 1060.0) and closing.pointer == 1060.0


def test_late_reading_never_moves_the_pointer_back():
    decision = decide(1000.0, 990.0, 60, 0)
    assert decision.late and decision.pointer is None and decision.window is None
    assert decide(1000.0, 1000.0, 60, 0).late


def test_windows_before_start_time_move_the_pointer_but_deploy_nothing():
    decision = decide(1000.0, 1100.0, 60, start_time=1050.0)
    assert decision.pointer == 1100.0 and decision.window is None


def test_regular_readings_give_one_job_per_full_window():
    times = [1000.0 + 60 * i for i in range(361)]  # 6 hours at one a minute
    windows = expected_windows(times, window=3600)
    assert len(windows) == 6
    assert windows[0] == (1000.0, 4600.0)
    assert all(end - start == 3600 for start, end in windows)


def test_gaps_close_a_window_at_the_first_reading_past_it():
    windows = expected_windows([0.0, 10.0, 500.0, 520.0, 1100.0], window=100)
    assert windows == [(0.0, 500.0), (500.0, 1100.0)]
