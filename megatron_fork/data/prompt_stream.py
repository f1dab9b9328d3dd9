"""Training prompts in a seeded order, epoch after epoch, from a cursor that is the whole state.

The order of epoch ``e`` is a shuffle seeded by ``(seed, e)``, so the prompts after any cursor
are known without replaying the run: a resumed run saves and restores one integer.
"""

import random
from collections.abc import Sequence

from megatron_fork.data.types import PromptExample


class PromptStream:
    def __init__(self, examples: Sequence[PromptExample], seed: int, cursor: int = 0):
        if not examples:
            raise ValueError("PromptStream needs at least one training prompt (the set is empty).")
        self._examples = tuple(examples)
        self._seed = seed
        self._orders: dict[int, list[int]] = {}
        self.cursor = cursor
        """Prompts handed out so far (over all epochs)."""

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._orders:
            order = list(range(len(self._examples)))
            random.Random(f"{self._seed}:{epoch}").shuffle(order)
            self._orders = {epoch: order}  # one epoch's order at a time
        return self._orders[epoch]

    def take(self, count: int) -> list[PromptExample]:
        """The next ``count`` prompts (crossing into the next epoch when one ends)."""
        taken = []
        for position in range(self.cursor, self.cursor + count):
            epoch, offset = divmod(position, len(self._examples))
            taken.append(self._examples[self._order(epoch)[offset]])
        self.cursor += count
        return taken
