"""A resolved run config without some of its settings: what two runs must share to be compared (plots.seeds: seeds
of one setting; plots.timing: runs of the same step cost). Plain dicts only; imports nothing of plots."""
from __future__ import annotations

import json


def without(config: dict, paths) -> dict:
    """A deep copy of `config` with every dotted path in `paths` (tuples of keys) removed where present."""
    out = json.loads(json.dumps(config, default=str))  # a deep copy
    for path in paths:
        node = out
        for key in path[:-1]:
            node = node.get(key) if isinstance(node.get(key), dict) else {}
        node.pop(path[-1], None)
    return out
