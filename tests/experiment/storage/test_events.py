"""The metrics.jsonl schema: each kind round-trips, old lines still read, bad ones are named."""

from __future__ import annotations

import json
import math

import pytest

from ewc.experiment.storage.events import (
    DivergedEvent,
    EvalEvent,
    EventError,
    EventLog,
    NoteEvent,
    TaskEndEvent,
    TrainEvent,
    event_to_json,
    parse_event,
)

EVENTS = [
    TaskEndEvent(0, "ewc", 0, 0, (0.1, 0.098)),
    EvalEvent(1, "l2", 4, 1, (0.5, None)),
    TrainEvent(0, "ewc", 4, 1, 0.31, 0.02),
    NoteEvent(0, "ewc", 20, "plain SGD on the penalty diverges"),
    DivergedEvent(2, "finetune", 37, 2, 1, "batch 3: the loss is not finite"),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.kind)
def test_every_kind_round_trips_through_a_json_line(event):
    line = json.dumps(event_to_json(event))
    assert parse_event(json.loads(line)) == event


def test_the_keys_are_written_in_the_order_of_older_runs():
    assert list(event_to_json(EVENTS[2])) == [
        "event",
        "seed",
        "strategy",
        "step",
        "task",
        "loss",
        "penalty",
    ]


def test_old_and_future_lines_are_read_leniently():
    old_note = {"event": "note", "seed": 0, "strategy": "ewc", "message": "m"}  # no step
    assert parse_event(old_note) == NoteEvent(0, "ewc", None, "m")
    assert parse_event({"event": "future_event_kind", "payload": [1]}) is None
    assert parse_event([1, 2]) is None
    nan = parse_event({**event_to_json(EVENTS[0]), "accuracies": [math.nan, "x", 0.5]})
    assert nan.accuracies == (None, None, 0.5)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"seed": "0"}, "seed must be an integer"),
        ({"step": True}, "step must be an integer"),
        ({"accuracies": 0.5}, "accuracies must be a list"),
        ({"strategy": None}, "strategy must be a string"),
    ],
)
def test_a_malformed_event_names_its_field(change, message):
    with pytest.raises(EventError, match=message):
        parse_event({**event_to_json(EVENTS[1]), **change})


def test_the_log_appends_and_cuts_back_to_a_recorded_length(tmp_path):
    log = EventLog(tmp_path / "cell" / "events.jsonl")
    log.append(EVENTS[0])
    length = log.durable_length()
    log.append(EVENTS[1])
    log.truncate(length)
    log.append(EVENTS[2])
    log.close()
    lines = (tmp_path / "cell" / "events.jsonl").read_text().splitlines()
    assert [parse_event(json.loads(line)) for line in lines] == [EVENTS[0], EVENTS[2]]
