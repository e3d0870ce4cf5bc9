"""The cache benchmark's ceiling: hits an unbounded cache could make over given operations."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from cache import Ceiling, ceiling

PROJECT_OF = [0, 7, 7, 9]  # tasks 1 and 2 in project 7, task 3 in project 9


def test_first_and_second_read_admission() -> None:
    events = [[(0, "task", 1), (1, "task", 1), (2, "task", 1), (3, "page", 7)]]
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=4, first_ask=2, second_ask=1)


def test_a_write_drops_exactly_what_it_changed() -> None:
    # Two threads; merged by sequence number. Task 1's status write drops task 1 and
    # project 7's page and counts; task 3 (project 9) and comments stay.
    events = [
        [(0, "task", 1), (2, "page", 7), (4, "status", 1), (6, "task", 1), (8, "page", 7)],
        [(1, "task", 3), (3, "comments", 1), (5, "task", 3), (7, "comments", 1)],
    ]
    found = ceiling(events, 5, 99, PROJECT_OF)
    assert found.reads == 4  # numbers 5..8: the earlier reads only fill the cache
    assert found.first_ask == 2  # task 3 and comments of task 1 survived; the rest was dropped


def test_comment_drops_only_that_tasks_comments_and_window_bounds() -> None:
    events = [
        [(0, "comments", 2), (1, "task", 2), (2, "comment", 2)],
        [(3, "comments", 2), (4, "task", 2), (5, "task", 2)],
    ]
    # Task 2 read at 1 and 4: kept from its second read (4), so no second-ask hit yet.
    assert ceiling(events, 3, 5, PROJECT_OF) == Ceiling(reads=2, first_ask=1, second_ask=0)


def test_a_read_while_a_write_is_in_flight_is_settled_in_the_caches_favour() -> None:
    # Atlas drops the task somewhere between sending the write (+) and acknowledging it.
    # A read in between hits if the task was cached, and the result counts as read
    # after the drop: the next read hits too.
    events = [[(0, "task", 1), (1, "status+", 1), (2, "task", 1), (3, "status", 1)], []]
    events[1] = [(4, "task", 1)]
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=3, first_ask=2, second_ask=1)


def test_without_a_read_in_flight_the_write_drops_the_result() -> None:
    events = [[(0, "task", 1), (1, "task", 1), (2, "status+", 1), (3, "status", 1)]]
    events.append([(4, "task", 1)])
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=3, first_ask=1, second_ask=0)


def test_a_result_first_read_while_its_write_is_in_flight_stays_cached() -> None:
    # Another thread read it after atlas dropped the old result: its store is fresh.
    events = [[(0, "comment+", 2), (2, "comment", 2)], [(1, "comments", 2), (3, "comments", 2)]]
    assert ceiling(events, 0, 99, PROJECT_OF) == Ceiling(reads=2, first_ask=1, second_ask=0)
