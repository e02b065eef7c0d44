"""The engine's Python dependencies inside Slicer: what is missing, and installing it after the user agrees.

An existing torch (e.g. from the PyTorch extension) is never replaced; a missing torch is installed through the
PyTorch extension when it is there (it picks the right CUDA build), else with pip. Installing runs pip in the
Slicer process, so it must happen on the main thread, never on the prediction worker.
"""
from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from typing import Callable, ContextManager, List, Optional, Sequence


@dataclass(frozen=True)
class Requirement:
    module: str  # import name
    package: str  # pip requirement


REQUIREMENTS = (
    Requirement("torch", "torch>=2.1"),
    Requirement("numpy", "numpy>=1.24"),
    Requirement("SimpleITK", "SimpleITK>=2.3"),
    Requirement("scipy", "scipy>=1.10"),
    Requirement("cv2", "opencv-python-headless>=4.8"),
    Requirement("PIL", "Pillow>=10"),
    Requirement("tqdm", "tqdm>=4.60"),
    # the local backend (`fastmedsam serve`, started as a child process with Slicer's Python)
    Requirement("fastapi", "fastapi>=0.110"),
    Requirement("uvicorn", "uvicorn>=0.29"),
    Requirement("pydantic_settings", "pydantic-settings>=2.2"),
    Requirement("zstandard", "zstandard>=0.22"),
)


def missing_requirements(
    requirements: Sequence[Requirement] = REQUIREMENTS,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> List[Requirement]:
    return [r for r in requirements if find_spec(r.module) is None]


def confirmation_text(missing: Sequence[Requirement], torch_via_extension: bool) -> str:
    lines = ["FastMedSAM needs these Python packages, which are not installed in Slicer yet:", ""]
    for requirement in missing:
        how = " (through the PyTorch extension)" if requirement.module == "torch" and torch_via_extension else ""
        lines.append(f"  - {requirement.package}{how}")
    lines += ["", "Install them now? Slicer may be unresponsive for a few minutes while they download."]
    return "\n".join(lines)


def install_missing(
    confirm: Callable[[str], bool],
    pip_install: Callable[[List[str]], None],
    install_torch: Optional[Callable[[], bool]] = None,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> bool:
    """Ask, then install what is missing. True when everything is importable afterwards; False if declined."""
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("dependencies must be installed from the main thread, not from a worker thread")
    missing = missing_requirements(find_spec=find_spec)
    if not missing:
        return True
    torch_missing = any(r.module == "torch" for r in missing)
    if not confirm(confirmation_text(missing, torch_missing and install_torch is not None)):
        return False
    if torch_missing and install_torch is not None:
        if not install_torch():
            raise RuntimeError("the PyTorch extension could not install torch; see its log")
        missing = [r for r in missing if r.module != "torch"]
    if missing:
        pip_install([r.package for r in missing])
    importlib.invalidate_caches()
    still_missing = missing_requirements(find_spec=find_spec)
    if still_missing:
        raise RuntimeError(f"still missing after installation: {', '.join(r.package for r in still_missing)}")
    return True


def install_with_feedback(
    confirm: Callable[[str], bool],
    pip_install: Callable[[List[str]], None],
    show_error: Callable[[str], None],
    busy: Callable[[], ContextManager],
    install_torch: Optional[Callable[[], bool]] = None,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
) -> bool:
    """`install_missing` for a Qt slot: the question is asked with the normal cursor, only the installation runs
    under `busy()` (a wait cursor), and any failure (pip's CalledProcessError included) becomes exactly one
    `show_error` message and a False result: nothing is raised out of the slot."""
    missing = missing_requirements(find_spec=find_spec)
    if not missing:
        return True
    try:
        torch_via_extension = install_torch is not None and any(r.module == "torch" for r in missing)
        if not confirm(confirmation_text(missing, torch_via_extension)):
            return False
        with busy():
            return install_missing(lambda _text: True, pip_install, install_torch, find_spec)
    except Exception as error:  # a slot must not raise: one dialog says what failed
        show_error(f"Installing the FastMedSAM dependencies failed:\n\n{error}")
        return False
