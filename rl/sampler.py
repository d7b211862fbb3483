"""The order of the training examples: the pairs of one prompt share an optimizer step, deterministic per
seed and epoch, so a resumed run sees exactly the data the uninterrupted one would."""

from __future__ import annotations

import random
from collections.abc import Iterator

from torch.utils.data import Sampler


class GroupedWindowSampler(Sampler[int]):
    """Index order in which every group's examples share an optimizer step, or consecutive ones.

    An optimizer step consumes ``window`` consecutive indices of this order (per-device batch x
    gradient accumulation x workers: accelerate hands consecutive batches to the ranks in turn).
    Each epoch the groups are shuffled with ``seed + epoch``, packed first-fit-decreasing into
    windows, and the windows shuffled. A group larger than a window is split: it fills whole
    windows and its remainder opens one more, which smaller groups may share, and those windows stay
    together through the shuffle, so the group is trained over consecutive steps (``split_groups``
    counts such groups). First-fit-decreasing over the same multiset of sizes always gives the same
    number of windows, so the epoch length is fixed. A window with room left repeats its own
    examples to fill it (a full window keeps batch shapes and the step count exact); ``padding``
    says how many slots that took.
    """

    def __init__(self, groups: list[str], window: int, seed: int = 0):
        self.window = window
        self.seed = seed
        self.epoch = 0
        members: dict[str, list[int]] = {}
        for i, g in enumerate(groups):
            members.setdefault(g, []).append(i)
        self.groups = list(members.values())
        self.split_groups = sum(1 for m in self.groups if len(m) > window)
        self._windows = self._pack(random.Random(seed))
        self.padding = len(self._windows) * window - len(groups)

    def _pack(self, rng: random.Random) -> list[list[int]]:
        groups = [list(g) for g in self.groups]
        rng.shuffle(groups)
        groups.sort(key=len, reverse=True)  # stable: equal sizes keep the shuffled order
        blocks: list[list[list[int]]] = []  # runs of windows that stay consecutive
        open_windows: list[list[int]] = []  # windows with room, in the order they were opened
        for g in groups:
            if len(g) > self.window:
                rng.shuffle(g)
                pieces = [g[i : i + self.window] for i in range(0, len(g), self.window)]
                blocks.append(pieces)
                if len(pieces[-1]) < self.window:
                    open_windows.append(pieces[-1])
                continue
            for w in open_windows:
                if len(w) + len(g) <= self.window:
                    w.extend(g)
                    break
            else:
                blocks.append([list(g)])
                open_windows.append(blocks[-1][0])
        rng.shuffle(blocks)
        windows = [w for block in blocks for w in block]
        for w in windows:
            rng.shuffle(w)
            w.extend(w[i % len(w)] for i in range(self.window - len(w)))
        return windows

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._windows = self._pack(random.Random(self.seed * 100_003 + epoch))

    def __iter__(self) -> Iterator[int]:
        for w in self._windows:
            yield from w

    def __len__(self) -> int:
        return len(self._windows) * self.window
