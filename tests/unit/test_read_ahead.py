"""catalog.base.read_ahead: the second step of a policy rule's query (the
rows of the candidates' numbers, a page per read, read ahead in threads).
Pure logic: `fetch` stands in for the catalog's read of one page."""

import threading
import time

import pytest

from tierfs.catalog import base


def reader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("tierfs-read")]


class Pages:
    """A fetch that returns each number's square, takes `delay` seconds per
    page and records how many reads were in flight at once."""

    def __init__(self, delay: float = 0.0):
        self.delay, self.lock = delay, threading.Lock()
        self.now = self.most = 0
        self.pages: list[list[int]] = []

    def __call__(self, part: list[int]) -> list[int]:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            self.pages.append(part)
        time.sleep(self.delay)
        with self.lock:
            self.now -= 1
        return [i * i for i in part]


def test_every_page_in_order_and_one_read_ahead_while_reads_are_fast():
    fetch = Pages()
    got = list(base.read_ahead(range(1, 1001), fetch, page=30, readers=4))
    assert got == [i * i for i in range(1, 1001)]
    assert sorted(map(tuple, fetch.pages)) == [tuple(range(k, min(k + 30, 1001))) for k in range(1, 1001, 30)]
    assert fetch.most == 1
    assert not reader_threads()


def test_slow_reads_overlap_up_to_the_readers():
    fetch = Pages(delay=base.SLOW_READ_S * 2)
    t0 = time.monotonic()
    got = list(base.read_ahead(list(range(400)), fetch, page=10, readers=4))
    took = time.monotonic() - t0
    assert got == [i * i for i in range(400)]
    assert fetch.most == 4
    # 40 pages of 30 ms each: 1.2 s one after another, about a quarter of it four at a time
    assert took < 40 * fetch.delay * 0.6, took


def test_slow_s_zero_keeps_the_readers_busy_however_fast_the_reads():
    # MongoDB's candidates: the page's work is mongod's, so reads overlap even from its cache
    fetch = Pages(delay=base.SLOW_READ_S / 10)
    got = list(base.read_ahead(list(range(300)), fetch, page=10, readers=3, slow_s=0))
    assert got == [i * i for i in range(300)]
    assert fetch.most == 3
    assert not reader_threads()


def test_closing_early_ends_the_threads_and_reads_no_further():
    fetch = Pages(delay=base.SLOW_READ_S * 2)
    it = base.read_ahead(list(range(10_000)), fetch, page=10, readers=4)
    assert [next(it) for _ in range(25)] == [i * i for i in range(25)]
    it.close()
    read = len(fetch.pages)
    assert read <= 3 + 4 and not reader_threads()   # the pages consumed, and at most the readers' more
    time.sleep(fetch.delay * 3)
    assert len(fetch.pages) == read


def test_a_failed_read_reaches_the_consumer_after_the_pages_before_it():
    def fetch(part):
        if 50 in part:
            raise RuntimeError("catalog gone")
        return part
    it = base.read_ahead(list(range(100)), fetch, page=10)
    assert [next(it) for _ in range(50)] == list(range(50))
    with pytest.raises(RuntimeError, match="catalog gone"):
        next(it)
    assert not reader_threads()


def test_one_page_or_less_is_read_in_the_callers_thread():
    seen = []

    def fetch(part):
        seen.append(threading.current_thread().name)
        return part
    assert list(base.read_ahead([3, 1, 2], fetch, page=10)) == [3, 1, 2]
    assert seen == [threading.current_thread().name]


# ---- fetch_ahead: batches made in a thread ahead of the consumer --------------------------------
def fetch_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name == "tierfs-fetch-ahead"]


def test_fetch_ahead_gives_every_batch_in_order_and_works_while_the_consumer_does():
    made = []

    def batches():
        for k in range(20):
            time.sleep(0.01)      # a round trip
            made.append(k)
            yield [k] * 3
    t0 = time.monotonic()
    got = []
    for b in base.fetch_ahead(batches()):
        time.sleep(0.01)          # the consumer's work on it
        got.append(b)
    assert got == [[k] * 3 for k in range(20)]
    assert time.monotonic() - t0 < 20 * 0.02 * 0.8   # overlapped, not one after the other
    assert not fetch_threads()


def test_fetch_ahead_stays_at_most_two_batches_ahead_and_stops_when_closed():
    made = []
    closed = []

    def batches():
        try:
            for k in range(1000):
                made.append(k)
                yield [k]
        finally:
            closed.append(True)
    it = base.fetch_ahead(batches(), ahead=2)
    assert next(it) == [0]
    time.sleep(0.1)
    assert len(made) <= 1 + 2 + 1    # the one taken, two queued, one waiting to be queued
    it.close()
    assert not fetch_threads() and closed == [True]


def test_fetch_ahead_hands_over_an_error_after_the_batches_before_it():
    def batches():
        yield [1]
        yield [2]
        raise ConnectionError("catalog gone")
    it = base.fetch_ahead(batches())
    assert next(it) == [1] and next(it) == [2]
    with pytest.raises(ConnectionError, match="catalog gone"):
        next(it)
    assert not fetch_threads()
