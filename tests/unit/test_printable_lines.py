"""display.printable_lines: `tierfs find`'s batch form of printable, with
its fast path for plain ASCII names. It must give exactly the bytes of
printable() per name, whatever the names hold."""

import random

from tierfs.display import printable, printable_lines


def slow(names: list[bytes]) -> bytes:
    return b"".join(printable(n).encode() + b"\n" for n in names)


def test_plain_names_pass_as_they_are():
    names = [b"/a/b.txt", b"/dir with spaces/x", b"/back\\slash"]
    assert printable_lines(names) == b"/a/b.txt\n/dir with spaces/x\n/back\\slash\n" == slow(names)
    assert printable_lines([]) == b""


def test_any_unsafe_name_in_a_batch_is_escaped_and_the_rest_kept():
    for odd in (b"/new\nline", b"/esc\x1b]0;x\x07", b"/del\x7f", b"/tab\t", b"/caf\xc3\xa9", b"/bad\xff",
                "/rtl\u202eexe.txt".encode(), b"/nul\x00"):
        names = [b"/ok1", odd, b"/ok2"]
        assert printable_lines(names) == slow(names), odd
        assert printable_lines(names).count(b"\n") == 3, odd   # one line per name, always


def test_random_batches_match_printable_exactly():
    rng = random.Random(11)
    alphabet = [bytes([b]) for b in range(256)] + ["\u2028".encode(), "\u200e".encode(), "é".encode()]
    for _ in range(300):
        names = [b"/" + b"".join(rng.choice(alphabet) if rng.random() < 0.05 else bytes([rng.randrange(32, 127)])
                                 for _ in range(rng.randrange(0, 20))) for _ in range(rng.randrange(1, 8))]
        assert printable_lines(names) == slow(names), names
