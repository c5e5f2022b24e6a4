"""Each running cell's progress reaches the driver's bars, whatever runs the cell: in-process, in worker processes
(through a queue relayed by a driver thread) and, in test_ray_executor, as Ray tasks."""

from collections import Counter

import yaml

from giabench import executors, progress, runner, suite

SUITE = """
name: progress
defaults: {dataset: mnist-sample, model: {name: mlp, width: 8}, attack: {name: ig, iterations: 30, tv: 0.0}}
grid: {seed: [0, 1, 2]}
"""


class RecordingBoard(progress.Board):
    """A board that also keeps every event it was handed."""

    def __init__(self):
        super().__init__(3, 0, "test", enabled=False)
        self.events = []

    def handle(self, event):
        self.events.append(event)
        super().handle(event)


def steps_by_cell(events) -> tuple[dict, Counter, set]:
    begun = {e[1]: e[3] for e in events if e[0] == "begin"}
    steps = Counter()
    for e in events:
        if e[0] == "advance":
            steps[e[1]] += e[2]
    return begun, steps, {e[1] for e in events if e[0] == "end"}


def test_worker_processes_report_each_cells_iterations_to_the_driver():
    cells = suite.expand(yaml.safe_load(SUITE)).cells
    board, finished = RecordingBoard(), []
    executors.in_pool(cells, runner.run_cell_safely, runner.Environment(), 2,
                      lambda cell, result: finished.append(result[0]["status"]), board)
    begun, steps, ended = steps_by_cell(board.events)
    ids = {c.id for c in cells}
    assert finished == ["ok"] * 3
    assert begun == dict.fromkeys(ids, 30) and steps == Counter(dict.fromkeys(ids, 30)) and ended == ids


def test_an_in_process_cell_reports_every_step_as_it_happens():
    cell = suite.expand(yaml.safe_load(SUITE)).cells[0]
    board = RecordingBoard()
    progress.reported(runner.run_cell_safely, cell, runner.Environment(), board.handle, every=0.0)
    kinds = [e[0] for e in board.events]
    assert kinds == ["begin"] + ["advance"] * 30 + ["end"]


def test_a_reporter_batches_steps_and_sends_what_is_left_at_the_end():
    sent = []
    reporter = progress.Reporter(sent.append, "c", "label", every=3600)
    reporter.begin(10)
    for _ in range(10):
        reporter.advance(1)
    assert [e[0] for e in sent] == ["begin"]  # the steps wait for the hour to pass (or the end)
    reporter.end()
    assert sum(e[2] for e in sent if e[0] == "advance") == 10 and sent[-1] == ("end", "c")
