"""Progress: periodic lines inside a task when not on a terminal, a tqdm bar on one, quiet."""

from __future__ import annotations

import io

from ewc.experiment.progress import BarProgress, LineProgress, Progress, make_progress
from ewc.experiment.storage.rundir import Cell

CELL = Cell(0, "ewc")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def drive(progress: Progress, clock: FakeClock, seconds_per_step: float = 1.0) -> None:
    """A task of 40 steps (2 epochs of 20 batches), evaluated after step 5, then done."""
    progress.cell_started(CELL, 2)
    progress.task_started(CELL, 0, 40, 0)
    for step in range(40):
        clock.now += seconds_per_step
        progress.step(CELL, 0, step // 20, step % 20, 20, 0.5)
        if step == 4:
            progress.evaluated(CELL, 0, [0.9, 0.1])
    progress.task_done(CELL, 0, [0.95, 0.1])
    progress.note(CELL, "something to read")
    progress.close()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_lines_come_every_interval_with_step_loss_accuracy_and_time_left():
    stream, clock = io.StringIO(), FakeClock()
    drive(LineProgress(stream, interval=10.0, clock=clock), clock)
    lines = stream.getvalue().splitlines()
    assert lines[0] == "[00:00] seed 0 · ewc: 2 tasks"
    periodic = [line for line in lines if "step " in line]
    assert periodic[0] == (
        "[00:10] seed 0 · ewc: task 1 · step 10/40 · loss 0.500 · accuracy 90.0% · 00:30 left"
    )
    assert len(periodic) == 4  # one every 10 s of a 40 s task
    assert lines[-2] == "[00:40] seed 0 · ewc: task 1 done; accuracy on tasks 1..1: 0.950"
    assert lines[-1] == "[00:40] seed 0 · ewc: NOTE something to read"


def test_quiet_prints_only_the_notes():
    stream, clock = io.StringIO(), FakeClock()
    drive(LineProgress(stream, quiet=True, clock=clock), clock)
    assert stream.getvalue().splitlines() == ["[00:40] seed 0 · ewc: NOTE something to read"]


def test_a_terminal_gets_a_tqdm_bar_and_the_same_lines():
    stream = Terminal()
    progress = make_progress(stream)
    assert isinstance(progress, BarProgress)
    drive(progress, FakeClock())
    text = stream.getvalue()
    assert "seed 0 · ewc task 1" in text  # the bar's description
    assert "task 1 done; accuracy on tasks 1..1: 0.950" in text


class FakeBar:
    """Records what `BarProgress` asks of a tqdm bar."""

    def __init__(self, **options):
        self.options, self.updates, self.postfix, self.closed = options, 0, None, False

    def update(self, n: int) -> None:
        self.updates += n

    def set_postfix_str(self, text: str, refresh: bool) -> None:
        self.postfix = text

    def close(self) -> None:
        self.closed = True

    @staticmethod
    def write(text: str, file) -> None:
        file.write(text + "\n")


def test_the_bar_counts_steps_and_shows_loss_and_accuracy():
    made: list[FakeBar] = []

    def tqdm(**options) -> FakeBar:
        made.append(FakeBar(**options))
        return made[-1]

    tqdm.write = FakeBar.write
    drive(BarProgress(io.StringIO(), tqdm=tqdm), FakeClock())
    (bar,) = made
    assert (bar.options["total"], bar.options["initial"], bar.updates) == (40, 0, 40)
    assert bar.postfix == "loss 0.500 · accuracy 90.0%"
    assert bar.closed


def test_the_factory_picks_lines_off_a_terminal_and_quiet_anywhere():
    assert type(make_progress(io.StringIO())) is LineProgress
    quiet = make_progress(Terminal(), quiet=True)
    assert type(quiet) is LineProgress
    assert quiet.quiet
