"""The lazy page server's bookkeeping of a running thread's mapping changes (munmap, madvise
DONTNEED, mremap), on a plan alone: which pieces are left to copy, where, and how many. The
real events, from a running thread during a restore, are in
tests/integration/test_held_driver_restore.py."""

from __future__ import annotations

from pathlib import Path

from restoreprof.checkpoint.lazy_pages import GONE, LazyPages, Piece, Space

MIB = 1 << 20


def _server_with(*states: int) -> tuple[LazyPages, Space]:
    """A server (never started) serving one process: pieces of 2 MiB from 16 MiB up, in the
    given states (0 waiting, 1 being copied, 2 in), each one's bytes at offset = its address."""
    server = LazyPages(Path("/nonexistent"), Path("/nonexistent"))
    space = Space(1234)
    for i, state in enumerate(states):
        start = 16 * MIB + i * 2 * MIB
        space.pieces.append(Piece(space, start, 2 * MIB, start, state))
    space.reindex()
    space.left = sum(1 for s in states if s != 2)
    server.spaces.append(space)
    server._waiting.extend(p for p in space.pieces if p.state == 0)
    return server, space


def _layout(space: Space) -> list[tuple[int, int, int, int]]:
    return [(p.start // MIB, p.length // MIB, p.offset // MIB, p.state) for p in space.pieces]


def test_an_unmapped_range_is_never_copied_and_its_cut_pieces_keep_their_bytes():
    server, space = _server_with(0, 1, 2, 0)
    first, second = space.pieces[0], space.pieces[1]
    with server._lock:
        server._forget(space, 17 * MIB, 19 * MIB)  # the second half of one, the first of the next
    assert _layout(space) == [(16, 1, 16, 0), (19, 1, 19, 0), (20, 2, 20, 2), (22, 2, 22, 0)]
    assert first.state == GONE and second.state == GONE  # the copier that owns one drops it
    # two cut pieces, each replaced by its kept part (waiting): still 3 to copy
    assert space.left == 3
    assert server.stats.changes == 1 and server.stats.dropped_bytes == 2 * MIB
    waiting = [p for p in server._waiting if p.state == 0]
    assert sorted((p.start // MIB, p.length // MIB) for p in waiting) == [(16, 1), (19, 1),
                                                                          (22, 2)]


def test_a_discarded_piece_already_in_is_forgotten_so_its_faults_get_zero_pages():
    server, space = _server_with(2, 2)
    with server._lock:
        server._forget(space, 16 * MIB, 18 * MIB)
    assert space.find(16 * MIB) is None  # a fault there now gets a zero page
    assert space.find(18 * MIB) is not None and space.left == 0


def test_a_moved_range_takes_its_pieces_and_their_bytes_with_it():
    server, space = _server_with(0, 0, 2)
    with server._lock:  # the first 3 MiB move to 64 MiB
        server._move(space, 16 * MIB, 64 * MIB, 3 * MIB)
    assert _layout(space) == [(19, 1, 19, 0), (20, 2, 20, 2), (64, 2, 16, 0), (66, 1, 18, 0)]
    assert space.find(66 * MIB + 4096).offset == 18 * MIB  # its bytes: still the old range's
    assert space.left == 3  # one piece cut in two


def test_the_last_change_can_complete_the_restore():
    server, space = _server_with(2, 0)
    server._finished = True
    with server._lock:
        assert not server._complete()
        server._forget(space, 18 * MIB, 20 * MIB)  # the only piece still waiting goes away
        assert server._complete() and server.stats.done_ns > 0
