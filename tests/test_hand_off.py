"""A task's last step handed to its thread's helper: the task goes on, one hand-off at a time.

Real threads: the handed-off steps block on events to pin down what runs when.
"""

from __future__ import annotations

import threading

import pytest

from pipeline.executor import hand_off, resolved

#: Seconds any one wait between threads may take before the test fails.
PATIENCE = 10.0


def _blocked(gate: threading.Event, value: int) -> tuple[int, str]:
    assert gate.wait(PATIENCE), "the test never opened the gate"
    return value, threading.current_thread().name


def _failing(message: str) -> None:
    raise OSError(message)


def test_the_caller_goes_on_while_its_hand_off_runs_on_another_thread() -> None:
    gate = threading.Event()
    future = hand_off(_blocked, gate, 7)
    assert not future.done(), "hand_off returned before its step finished"
    gate.set()
    value, thread = resolved(future)
    assert value == 7 and thread != threading.current_thread().name
    assert resolved(8) == 8, "a plain result is its own value"


def test_a_thread_has_one_hand_off_in_flight() -> None:
    gate = threading.Event()
    handed: list[str] = []

    def task() -> None:
        first = hand_off(_blocked, gate, 1)
        handed.append("first")
        second = hand_off(_blocked, gate, 2)  # waits here until the first is done
        handed.append("second")
        assert first.done()
        assert [resolved(first)[0], resolved(second)[0]] == [1, 2]

    runner = threading.Thread(target=task)
    runner.start()
    runner.join(0.5)
    assert handed == ["first"], "the second hand-off did not wait for the first"
    gate.set()
    runner.join(PATIENCE)
    assert handed == ["first", "second"]


def test_a_failed_hand_off_fails_where_it_is_resolved_not_the_next_one() -> None:
    failed = hand_off(_failing, "disk full")
    gate = threading.Event()
    gate.set()
    following = hand_off(_blocked, gate, 3)
    with pytest.raises(OSError, match="disk full"):
        resolved(failed)
    assert resolved(following)[0] == 3
