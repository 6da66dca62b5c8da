"""Which entries of a parameter train in ratio mode: a selection of its flattened (row-major) entries, in ascending
order, as a few contiguous ranges (adjacent masks, full parameters) or an index tensor (scatter masks).

A selection gathers the selected entries of a flat tensor into a vector, adds them into a vector, and writes a vector
back into them; nothing of the size of the full parameter is allocated except the index tensor of a scatter mask
(8 bytes per selected entry) and, while a scatter mask is drawn, the permutation it comes from.
"""
from __future__ import annotations

import torch


class Selection:
    """Sorted flat positions: ``ranges`` [(start, stop)] or ``index`` (1-D int64), ``count`` entries in all."""

    def __init__(self, numel: int, ranges: list[tuple[int, int]] | None = None, index: torch.Tensor | None = None):
        self.numel = numel
        self.ranges = ranges
        self.index = index
        self.count = int(index.numel()) if index is not None else sum(b - a for a, b in ranges)

    @classmethod
    def from_index(cls, numel: int, index: torch.Tensor) -> "Selection":
        return cls(numel, index=index)

    def _pieces(self):
        """(flat start, flat stop, position in the vector) of each range."""
        at = 0
        for a, b in self.ranges:
            yield a, b, at
            at += b - a

    def gather(self, flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The selected entries of `flat` as a new vector of `dtype`."""
        if self.index is not None:
            return flat.index_select(0, self.index).to(dtype)
        out = torch.empty(self.count, dtype=dtype, device=flat.device)
        for a, b, at in self._pieces():
            out[at:at + b - a].copy_(flat[a:b])
        return out

    def add_into(self, vector: torch.Tensor, flat: torch.Tensor) -> None:
        """vector += the selected entries of `flat` (summed in vector's dtype)."""
        if self.index is not None:
            vector.add_(flat.index_select(0, self.index))
            return
        for a, b, at in self._pieces():
            vector[at:at + b - a].add_(flat[a:b])

    def write(self, flat: torch.Tensor, vector: torch.Tensor) -> None:
        """flat[selected] = vector (cast to flat's dtype)."""
        if self.index is not None:
            flat.index_copy_(0, self.index, vector.to(flat.dtype))
            return
        for a, b, at in self._pieces():
            flat[a:b].copy_(vector[at:at + b - a])


def adjacent_selection(numel: int, count: int, offset: int, device=None) -> Selection:
    """`count` consecutive entries from `offset`, wrapping past the end (badam 1.4's adjacent mask)."""
    end = offset + count
    if end <= numel:
        return Selection(numel, ranges=[(offset, end)])
    return Selection(numel, ranges=[(0, end - numel), (offset, numel)])


def scatter_selection(numel: int, count: int, offset: int, seed: int, device=None) -> Selection:
    """`count` entries of a random permutation of the entries (drawn from `seed`), taken from `offset` with wrap-around
    (badam 1.4's scatter mask: successive offsets walk through disjoint sets), sorted."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    generator = torch.Generator(device=device).manual_seed(seed)
    permutation = torch.randperm(numel, generator=generator, device=device)
    end = offset + count
    if end <= numel:
        chosen = permutation[offset:end]
    else:
        chosen = torch.cat([permutation[offset:], permutation[:end - numel]])
    index = chosen.sort().values
    del permutation, chosen
    return Selection(numel, index=index)
