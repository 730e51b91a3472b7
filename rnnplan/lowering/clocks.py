"""Happens-before between plan steps, by vector clocks over streams.

A step starts after everything earlier on its stream and after every step whose event it waits on
(and, transitively, what those waited on). `Clocks` holds, per step, the vector of "how many steps
of each stream have completed before this one finishes", which answers `happens_before(a, b)` in
O(1). It is shared by the lowering (choosing waits and safe buffer reuse) and by `verify_plan`.
"""

from __future__ import annotations


class Clocks:
    def __init__(self, num_streams: int):
        self.num_streams = num_streams
        self.stream: list[int] = []
        self.pos: list[int] = []  # index of the step within its stream
        # Completion clock per step. Python lists, not a NumPy array: planning asks millions of
        # single-element questions, and NumPy's per-call overhead dominates at 16 streams or fewer.
        self.done: list[list[int]] = []
        self._last = [[0] * num_streams for _ in range(num_streams)]
        self._count = [0] * num_streams

    def __len__(self) -> int:
        return len(self.stream)

    def add(self, stream: int, after: list[int]) -> int:
        """Append a step on `stream` that starts after the (completed) steps `after`; its index."""
        i = len(self.stream)
        vc = list(self._last[stream])
        for a in after:
            vc = list(map(max, vc, self.done[a]))
        pos = self._count[stream]
        vc[stream] = pos + 1
        self._count[stream] = pos + 1
        self._last[stream] = vc
        self.done.append(vc)
        self.stream.append(stream)
        self.pos.append(pos)
        return i

    def covered(self, a: int, stream: int) -> bool:
        """Is step a already complete when the next step on `stream` starts (with no new waits)?"""
        return self._last[stream][self.stream[a]] > self.pos[a]

    def covers(self, b: int, a: int) -> bool:
        """Has step a completed by the time step b completes (a happens before or is b)?"""
        return self.done[b][self.stream[a]] > self.pos[a]

    def happens_before(self, a: int, b: int) -> bool:
        """Step a completes before step b starts."""
        if a == b:
            return False
        if self.stream[a] == self.stream[b]:
            return self.pos[a] < self.pos[b]
        return self.done[b][self.stream[a]] > self.pos[a]


def reduce_waits(clocks: Clocks, stream: int, deps: list[int]) -> list[int]:
    """The fewest steps to wait on so that all `deps` complete before a new step on `stream` starts.

    A dependency is dropped when stream order or another kept dependency already implies it: this
    is the transitive reduction of (DAG edges + stream order), restricted to cross-stream edges.
    """
    latest: dict[int, int] = {}
    for d in deps:  # per stream, only the latest dependency matters: stream order implies the rest
        s = clocks.stream[d]
        if s != stream and not clocks.covered(d, stream) and \
                (s not in latest or clocks.pos[d] > clocks.pos[latest[s]]):
            latest[s] = d
    candidates = list(latest.values())
    return [d for d in candidates
            if not any(o != d and clocks.covers(o, d) for o in candidates)]
