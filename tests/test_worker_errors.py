"""What a DataLoader worker's exception is told as (core.training.blame.worker_original):
its own type and message, read from the text torch gives the exception it raises again in
the main process. The reference is torch's own ExceptionWrapper, the code a worker uses."""

import pytest
from torch._utils import ExceptionWrapper

from core.training.blame import last_line, worker_original


def raised_again(fail, where: str = "in DataLoader worker process 0") -> BaseException:
    """The exception the main process gets when `fail()` raises in worker process 0 (or
    `where` else: torch's pin-memory thread wraps what it catches the same way)."""
    try:
        fail()
    except Exception:  # noqa: BLE001 - any, as a worker catches it
        wrapper = ExceptionWrapper(where=where)
    with pytest.raises(BaseException) as caught:
        wrapper.reraise()
    return caught.value


def chained():
    try:
        raise ValueError("the inner fault")
    except ValueError:
        raise ValueError("crop box is empty")  # noqa: B904


def test_an_exception_raised_while_handling_another_is_told_by_its_own_message():
    """The traceback holds both ('During handling of the above exception ...'); the one raised
    is the last."""
    exc = raised_again(chained)
    assert "the inner fault" in str(exc)  # torch's text holds both
    assert worker_original(exc) == ("ValueError", "crop box is empty")
    assert last_line(exc) == "ValueError: crop box is empty"


def test_an_exception_without_a_message_is_its_type_once_not_twice():
    """A bare `assert` in plugin code (outside pytest, which adds a message) raises this."""
    def fail():
        raise AssertionError

    exc = raised_again(fail)
    assert worker_original(exc) == ("AssertionError", "")
    assert last_line(exc) == "AssertionError"


def test_a_bare_raise_while_handling_another_does_not_take_that_ones_message():
    def fail():
        try:
            raise KeyError("a key")
        except KeyError:
            raise ValueError  # noqa: B904 - as plugin code may

    assert last_line(raised_again(fail)) == "ValueError"


def test_a_message_that_mentions_a_worker_is_read_from_the_last_line():
    def fail():
        raise ValueError("Caught OSError in DataLoader worker process 3 (retried)")

    exc = raised_again(fail)
    assert worker_original(exc) == ("ValueError", "Caught OSError in DataLoader worker process 3 (retried)")


def test_an_exception_raised_in_the_main_process_is_left_as_it_is():
    assert worker_original(ValueError("plain")) is None
    assert last_line(ValueError("first line\nsecond line")) == "ValueError: second line"


def test_an_exception_from_the_pin_memory_thread_is_told_once_too():
    """torch's pin-memory thread (pin_memory: true, on CUDA) wraps a failure of a batch's
    pin_memory() as 'Caught X in pin memory thread for device 0.' (torch/utils/data/
    _utils/pin_memory.py)."""
    def fail():
        raise RuntimeError("cannot pin 'extras.boxes': not a tensor")

    exc = raised_again(fail, where="in pin memory thread for device 0")
    assert worker_original(exc) == ("RuntimeError", "cannot pin 'extras.boxes': not a tensor")
    assert last_line(exc) == "RuntimeError: cannot pin 'extras.boxes': not a tensor"
