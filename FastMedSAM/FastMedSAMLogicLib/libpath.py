"""Make the engine (`FastMedSAMLib`) importable from the Slicer module in both layouts.

Installed extension: FastMedSAMLib is installed beside FastMedSAM.py (already on sys.path).
Developer layout ("Additional module paths" = <repo>/FastMedSAM): the engine lives in the repository root.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parents[1]
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def ensure_engine_importable() -> None:
    if importlib.util.find_spec("FastMedSAMLib") is not None:
        return
    if (REPOSITORY_ROOT / "FastMedSAMLib" / "__init__.py").is_file():
        sys.path.insert(0, str(REPOSITORY_ROOT))
        importlib.invalidate_caches()
    if importlib.util.find_spec("FastMedSAMLib") is None:
        raise ImportError(
            f"FastMedSAMLib not found: neither installed with the extension nor in the repository root {REPOSITORY_ROOT}"
        )


def resource_path(relative: str) -> Path:
    """`<module dir>/Resources/<relative>` when installed, `<repository>/Resources/<relative>` when developing."""
    for base in (MODULE_DIR / "Resources", REPOSITORY_ROOT / "Resources"):
        if (base / relative).is_file():
            return base / relative
    raise FileNotFoundError(f"FastMedSAM resource {relative} not found under {MODULE_DIR} or {REPOSITORY_ROOT}")
