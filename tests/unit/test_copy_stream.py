"""tiers.base.copy_stream: the one copy loop of every tier's put() and read-back."""

from __future__ import annotations

import io

from tierfs.tiers.base import copy_stream, sha256_stream


class Trickle(io.RawIOBase):
    """Gives at most `most` bytes a read, as sockets and pipes do; counts the reads."""

    def __init__(self, data: bytes, most: int):
        self.src, self.most, self.reads = io.BytesIO(data), most, 0

    def read(self, n: int = -1) -> bytes:
        self.reads += 1
        return self.src.read(min(n, self.most) if n >= 0 else self.most)


def test_copies_everything_in_chunks():
    out = bytearray()
    assert copy_stream(io.BytesIO(b"x" * 10), out.extend, chunk=3) == 10
    assert out == b"x" * 10
    assert copy_stream(io.BytesIO(b""), out.extend) == 0


def test_short_reads_are_not_the_end():
    src = Trickle(bytes(range(256)) * 4, most=100)
    out = bytearray()
    assert copy_stream(src, out.extend, chunk=1000) == 1024 and out == bytes(range(256)) * 4
    assert src.reads == 12   # 11 reads of data, then the empty one that ends it


def test_limit_stops_there_and_leaves_the_rest():
    src = io.BytesIO(b"abcdefghij")
    out = bytearray()
    assert copy_stream(src, out.extend, chunk=4, limit=6) == 6 and out == b"abcdef"
    assert src.read() == b"ghij"   # nothing past the limit was taken
    assert copy_stream(io.BytesIO(b"abc"), out.extend, limit=6) == 3   # fewer only at the end


def test_sha256_stream():
    assert sha256_stream(io.BytesIO(b"abc")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", 3)
