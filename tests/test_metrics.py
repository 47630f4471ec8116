"""The metric window: per-window means, deferred hand-out, flushing."""

import pytest
import torch

from hico.metrics import MetricWindow


class _Done:
    """Stands in for a CUDA event: done once released."""

    def __init__(self):
        self.finished = False

    def query(self):
        return self.finished

    def synchronize(self):
        self.finished = True


def _terms(a, b):
    return {"a": torch.tensor(a), "b": torch.tensor(b)}


def test_windows_give_means_and_fields():
    window = MetricWindow(("a", "b"), torch.device("cpu"))
    window.add(_terms(1.0, 10.0))
    window.add(_terms(3.0, 30.0))
    window.close(2, epoch=0.5, lr=0.1)
    window.add(_terms(5.0, 50.0))
    window.close(3, epoch=0.75, lr=0.05)
    window.close(3)  # an empty window is no line
    first, second = window.ready()
    assert first["step"] == 2 and first["a"] == 2.0 and first["b"] == 20.0 and first["steps"] == 2
    assert first["epoch"] == 0.5 and first["lr"] == 0.1 and first["seconds"] >= 0
    assert second["step"] == 3 and second["a"] == 5.0 and second["steps"] == 1 and second["lr"] == 0.05
    assert window.ready() == [] and window.flush() == []


def test_deferred_windows_wait_for_their_copy_in_order():
    window = MetricWindow(("a", "b"), torch.device("cpu"))
    window.add(_terms(1.0, 2.0))
    window.close(1)
    window.add(_terms(4.0, 8.0))
    window.close(2)
    events = [snap.end_event for snap in window.pending]
    assert events == [None, None]  # on the CPU the copies are done at once
    for snap in window.pending:
        snap.end_event = _Done()
    assert window.ready() == []  # the oldest is not copied yet: nothing, and nothing out of order
    window.pending[1].end_event.finished = True
    assert window.ready() == []
    window.pending[0].end_event.finished = True
    assert [line["step"] for line in window.ready()] == [1, 2]
    window.add(_terms(2.0, 2.0))
    window.close(3)
    window.pending[0].end_event = _Done()
    (line,) = window.flush()  # waits (synchronize) instead of skipping
    assert line["step"] == 3 and line["a"] == 2.0


def test_closed_sums_are_not_touched_by_later_steps():
    window = MetricWindow(("a", "b"), torch.device("cpu"))
    window.add(_terms(1.0, 1.0))
    window.close(1)
    window.pending[0].end_event = _Done()
    window.add(_terms(100.0, 100.0))  # goes to the next window's buffer
    window.pending[0].end_event.finished = True
    (line,) = window.ready()
    assert line["a"] == 1.0


def test_unknown_term_is_a_bug():
    window = MetricWindow(("a", "missing"), torch.device("cpu"))
    with pytest.raises(KeyError):
        window.add(_terms(1.0, 1.0))
