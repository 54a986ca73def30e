"""memory.ordinary_pages: numpy's huge-page request is off inside, and restored after, however uses overlap."""
import threading

import pytest

from organscope import memory


def _current(switch) -> bool:
    value = switch(True)   # returns the previous setting
    switch(value)
    return bool(value)


@pytest.fixture
def switch():
    s = memory._switch()
    if s is None:
        pytest.skip("this numpy has no huge-page switch")
    before = _current(s)
    yield s
    s(before)


@pytest.mark.parametrize("initial", [True, False])
def test_off_inside_and_restored_after(switch, initial):
    switch(initial)
    with memory.ordinary_pages():
        assert _current(switch) is False
        with memory.ordinary_pages():
            assert _current(switch) is False
        assert _current(switch) is False   # the outer use is still running
    assert _current(switch) is initial


def test_overlapping_threads_restore_the_setting_once_all_are_done(switch):
    switch(True)
    entered, release = threading.Barrier(3), threading.Event()

    def job():
        with memory.ordinary_pages():
            entered.wait()
            release.wait()

    threads = [threading.Thread(target=job) for _ in range(2)]
    for t in threads:
        t.start()
    entered.wait()
    assert _current(switch) is False
    release.set()
    for t in threads:
        t.join()
    assert _current(switch) is True


def test_restored_when_the_work_fails(switch):
    switch(True)
    with pytest.raises(RuntimeError):
        with memory.ordinary_pages():
            raise RuntimeError("segmentation failed")
    assert _current(switch) is True
