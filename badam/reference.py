"""Load the OFFICIAL badam 1.4 (Luo et al.) for side-by-side comparisons, under a module name that cannot clash.

Our package is also called ``badam``, so the official wheel cannot be imported by its own name in the same process.
It is installed unpacked in a separate folder (``pip install --no-deps --target <dir> badam==1.4``) and loaded from
there as ``badam_official``. The folder comes from the argument, else ``$BADAM_OFFICIAL_PATH``, else
``<repo>/.venv/reference``. The official package imports transformers at import time.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

OFFICIAL_MODULE_NAME = "badam_official"


def default_official_path() -> Path:
    env = os.environ.get("BADAM_OFFICIAL_PATH")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / ".venv" / "reference"


def _package_dir(path: Path) -> Path | None:
    """Accept either the install folder (holding badam/) or the badam/ package folder itself."""
    for candidate in (path / "badam", path):
        if (candidate / "__init__.py").is_file() and (candidate / "block_optim.py").is_file():
            return candidate
    return None


def official_package_dir(path: str | os.PathLike | None = None) -> Path | None:
    """The badam 1.4 package folder under `path` (default: default_official_path()), or None when it is not there."""
    return _package_dir(Path(path) if path is not None else default_official_path())


def load_official(path: str | os.PathLike | None = None, module_name: str = OFFICIAL_MODULE_NAME) -> ModuleType:
    """Import badam 1.4 from `path` as `module_name` (cached in sys.modules) and return the module.

    The returned module exposes the official ``BlockOptimizer``, ``BlockOptimizerRatio`` and ``BAdamCallback``.
    """
    if module_name in sys.modules:
        return sys.modules[module_name]
    root = Path(path) if path is not None else default_official_path()
    package_dir = _package_dir(root)
    if package_dir is None:
        raise ModuleNotFoundError(
            f"official badam 1.4 not found under {root} (looked for {root / 'badam' / 'block_optim.py'} and "
            f"{root / 'block_optim.py'}). Install it with `pip install --no-deps --target {root} badam==1.4`, "
            f"or point BADAM_OFFICIAL_PATH (or the path argument) at the folder that holds badam/.")
    spec = importlib.util.spec_from_file_location(
        module_name, package_dir / "__init__.py", submodule_search_locations=[str(package_dir)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # registered first so the package's relative imports resolve to it
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        for name in [n for n in sys.modules if n.startswith(module_name + ".")]:
            sys.modules.pop(name, None)
        raise
    return module
