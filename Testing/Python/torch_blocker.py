"""Python source that, run first in a fresh interpreter, makes every `import torch` fail: tests prove with it that
a module (the contract, the client) works on a machine without torch."""

BLOCK_TORCH = """
import builtins, sys
real = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch is blocked in this test")
    return real(name, *args, **kwargs)
builtins.__import__ = guarded
"""
