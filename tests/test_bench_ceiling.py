"""The cache benchmark's ceiling: hits an unbounded cache could make over given operations."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from cache import READ_KINDS, Ceiling, Event, ceiling

PROJECT_OF = [0, 7, 7, 9]  # tasks 1 and 2 in project 7, task 3 in project 9


def instant(*threads: list[tuple[int, str, int]]) -> list[list[Event]]:
    """Each thread's operations at the given moments, every read over at once."""
    events: list[list[Event]] = []
    for operations in threads:
        mine: list[Event] = []
        for number, kind, key in operations:
            mine.append((2 * number, kind, key))
            if kind in READ_KINDS:
                mine.append((2 * number + 1, "-", 2 * number))
        events.append(mine)
    return events


def test_first_and_second_read_admission() -> None:
    events = instant([(0, "task", 1), (1, "task", 1), (2, "task", 1), (3, "page", 7)])
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=4, first_ask=2, second_ask=1)


def test_a_write_drops_exactly_what_it_changed() -> None:
    # Task 1's status write drops task 1 and project 7's page and counts; task 3 (project
    # 9) and comments stay. Reads before the window (number 5) only fill the cache.
    events = instant(
        [(0, "task", 1), (2, "page", 7), (4, "status", 1), (6, "task", 1), (8, "page", 7)],
        [(1, "task", 3), (3, "comments", 1), (5, "task", 3), (7, "comments", 1)],
    )
    found = ceiling(events, 10, 99, PROJECT_OF)
    assert found.reads == 4
    assert found.first_ask == 2  # task 3 and the comments of task 1 survived


def test_comment_drops_only_that_tasks_comments_and_window_bounds() -> None:
    events = instant(
        [(0, "comments", 2), (1, "task", 2), (2, "comment", 2)],
        [(3, "comments", 2), (4, "task", 2), (5, "task", 2)],
    )
    # Task 2 read at 1 and 4: kept from its second read (4), so no second-ask hit yet.
    assert ceiling(events, 6, 10, PROJECT_OF) == Ceiling(reads=2, first_ask=1, second_ask=0)


def test_a_read_while_a_write_is_in_flight_is_settled_in_the_caches_favour() -> None:
    # Atlas drops the task somewhere between sending the write (+) and acknowledging it.
    # A read in between hits if the task was cached, and may have run after the drop
    # and stored it again: the next read hits too.
    events = instant(
        [(0, "task", 1), (1, "status+", 1), (3, "status", 1)], [(2, "task", 1), (4, "task", 1)]
    )
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=3, first_ask=2, second_ask=1)


def test_without_a_read_in_flight_the_write_drops_the_result() -> None:
    events = instant(
        [(0, "task", 1), (1, "task", 1), (2, "status+", 1), (3, "status", 1)], [(4, "task", 1)]
    )
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=3, first_ask=1, second_ask=0)


def test_a_read_that_begins_before_a_write_and_ends_after_it_may_have_run_after_it() -> None:
    # Thread 1 begins a read (2), is descheduled while thread 2's write is sent and
    # acknowledged (3, 4), and only then runs it: it stores the new result, so its next
    # read (6) hits. Numbered only by when reads begin, the replay missed that hit.
    events: list[list[Event]] = [
        [(0, "task", 1), (1, "-", 0), (2, "task", 1), (5, "-", 2), (6, "task", 1), (7, "-", 6)],
        [(3, "status+", 1), (4, "status", 1)],
    ]
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=3, first_ask=2, second_ask=1)


def test_a_read_hits_if_another_stores_its_result_while_it_runs() -> None:
    events: list[list[Event]] = [
        [(0, "comments", 2), (3, "-", 0)],  # a long first read: nothing cached at its begin
        [(1, "comments", 2), (2, "-", 1)],  # the second read of it stores it (second ask)
    ]
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=2, first_ask=1, second_ask=1)
