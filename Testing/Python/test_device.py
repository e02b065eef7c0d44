"""Device choice: 'auto' picks what exists, a GPU asked for on a machine without one is a clear error (exit 2 on
the command line, never a traceback). CUDA's absence is simulated so the tests mean the same on a GPU machine."""
from __future__ import annotations

import pytest
import torch

from FastMedSAMLib.cli import main
from FastMedSAMLib.errors import DeviceError, FastMedSAMError
from FastMedSAMLib.runtime.device import resolve_device


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_auto_is_the_cpu_without_a_gpu(no_gpu) -> None:
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(no_gpu, device: str) -> None:
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        resolve_device(device)
    assert issubclass(DeviceError, FastMedSAMError)


@pytest.mark.parametrize("device", ["tpu", "gpu0", "mps"])
def test_unknown_devices_are_refused(device: str) -> None:
    with pytest.raises(DeviceError, match="cpu, cuda"):
        resolve_device(device)


def test_cli_cuda_without_a_gpu_exits_2_with_one_line(no_gpu, data_dir, tmp_path, capsys) -> None:
    out = tmp_path / "mask.nii.gz"
    image = data_dir / "xray_lung" / "cxr" / "CHNCXR_0001_0.png"
    code = main(["segment", str(image), "--box", "100", "100", "300", "300", "--device", "cuda", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("fastmedsam: error: ") and "no CUDA GPU" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_usage_errors_return_2_instead_of_exiting(capsys) -> None:
    assert main(["segment"]) == 2
    assert "usage:" in capsys.readouterr().err
