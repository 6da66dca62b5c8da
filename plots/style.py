"""One colour per method name, the same in every figure.

* The paper's methods (and the untuned base model) have pinned colours: they never move.
* Every other method in the registry (baselines/registry.py, read as text so that plots never imports torch) gets a
  colour from EXTRA_COLORS in the order of its sorted name; adding a method to the registry can move the colours of
  the non-pinned methods sorted after it, never within one run of `python -m plots`.
* A name that is in neither (a method added elsewhere, an old run) gets a colour from a hash of its name: the same
  on every machine and in every figure.
Variants of one method (BAdam's block order, its K) have their own stable colours (variant_color, k_color).
"""
from __future__ import annotations

import ast
import colorsys
import hashlib
import math
from functools import lru_cache
from pathlib import Path

import matplotlib

REGISTRY_FILE = Path(__file__).resolve().parent.parent / "baselines" / "registry.py"

PINNED_COLORS = {
    "adam": "#1f77b4",    # blue
    "badam": "#d62728",   # red
    "lora": "#2ca02c",    # green
    "lomo": "#9467bd",    # purple
    "galore": "#ff7f0e",  # orange
    "sgd": "#17becf",     # cyan
    "bsgd": "#e377c2",    # pink
    "base": "#7f7f7f",    # grey
}
EXTRA_COLORS = ("#8c564b", "#bcbd22", "#000000", "#1b9e77", "#7570b3", "#e6ab02", "#c51b7d", "#66a61e",
                "#003f5c", "#fb8072", "#a6761d", "#01665e", "#67001f", "#6baed6", "#b15928", "#999933")
ORDER_COLORS = {"random": "#d62728", "ascending": "#1f77b4", "descending": "#2ca02c", "fixed": "#7f7f7f"}


def registry_names(path: Path = REGISTRY_FILE) -> list[str]:
    """The method names of the registry's METHODS dict (sorted); [] when the file cannot be read as expected."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return []
    for node in ast.walk(tree):
        target = node.target if isinstance(node, ast.AnnAssign) else \
            node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if isinstance(target, ast.Name) and target.id == "METHODS" and isinstance(node.value, ast.Dict):
            return sorted(k.value for k in node.value.keys if isinstance(k, ast.Constant) and isinstance(k.value, str))
    return []


@lru_cache(maxsize=1)
def _assigned() -> dict[str, str]:
    colors = dict(PINNED_COLORS)
    others = [name for name in registry_names() if name not in colors]
    colors.update(zip(others, EXTRA_COLORS))
    return colors


def hash_color(name: str) -> str:
    """A colour from a hash of `name`: hue from sha256, fixed saturation and value (readable on white)."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:4], "big") / 2 ** 32
    value = 0.55 + 0.3 * digest[4] / 255
    return matplotlib.colors.to_hex(colorsys.hsv_to_rgb(hue, 0.75, value))


def method_color(method: str) -> str:
    """The colour of a method name (see the module docstring)."""
    return _assigned().get(method) or hash_color(method)


def variant_color(label: str) -> str:
    """BAdam's block orders (random, ascending, ...) in fixed colours; any other label by hash."""
    return ORDER_COLORS.get(label) or hash_color(label)


def k_color(k: float) -> str:
    """Blocks switched every K steps: viridis by log K over the paper's grid [10, 200], clipped beyond it (the
    same K, the same colour, everywhere)."""
    position = (math.log10(max(k, 1e-9)) - 1.0) / (math.log10(200) - 1.0)
    return matplotlib.colors.to_hex(matplotlib.colormaps["viridis"](min(1.0, max(0.0, position)) * 0.9))
