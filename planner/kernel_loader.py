"""Finding the torch MoE layer (``planner_kernels``) without making the planner depend on torch.

The planner itself never imports torch; ``validate`` and ``profile`` execute real layers and need
it. An install ships the layer as the package ``planner_kernels`` (the repository's ``kernels/``
folder); a source tree that was never installed has only the folder, which is loaded under the
same name so that every caller sees one module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any

from planner.errors import InputError


def load_kernels() -> Any:
    """The ``planner_kernels`` package (the repository's ``kernels/``), importing torch.

    Installed, it is ``planner_kernels``; in a source tree without an install the folder
    ``kernels/`` beside ``planner/`` is loaded under that name. Raises :class:`InputError`
    when torch is missing.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        raise InputError("validate needs torch: pip install 'moe-planner[torch]'") from None
    if "planner_kernels" in sys.modules:
        return sys.modules["planner_kernels"]
    try:
        return importlib.import_module("planner_kernels")
    except ImportError:
        pass
    root = Path(__file__).resolve().parents[1] / "kernels"
    init = root / "__init__.py"
    if not init.is_file():
        raise InputError("validate needs the planner_kernels package (kernels/); reinstall moe-planner")
    spec = importlib.util.spec_from_file_location("planner_kernels", init, submodule_search_locations=[str(root)])
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["planner_kernels"] = mod
    spec.loader.exec_module(mod)
    return mod
