"""Reading and writing checkpoint files: safetensors without torch, torch pickles safely."""

from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"


def flatten(tree: Mapping, prefix: str = "") -> dict[str, object]:
    """Nested mappings (`{"model": {"lstm.weight_ih_l0": ...}}`) to dotted keys."""
    flat: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat |= flatten(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def read_checkpoint(path: str | os.PathLike) -> dict[str, object]:
    """The flat tensor dict of a `.safetensors` or torch (`.pt`, `.pth`, `.bin`) file.

    Torch files are read with `torch.load(..., weights_only=True)`: nothing in them is executed,
    and a file that needs more than tensors is refused.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path!r}")
    if path.endswith(SAFETENSORS_SUFFIX):
        from safetensors import SafetensorError
        from safetensors.flax import load_file

        try:
            return dict(load_file(path))
        except SafetensorError as error:
            raise ValueError(f"{path!r} is not a readable safetensors file: {error}") from error
    if path.endswith(TORCH_SUFFIXES):
        import pickle

        import torch

        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as error:
            raise ValueError(
                f"{path!r} needs more than tensors to load, and jaxrnn reads torch files only with "
                "torch.load(weights_only=True), which never runs code from the file. If you trust "
                "it, load it yourself and save the state_dict as safetensors "
                "(safetensors.torch.save_file(model.state_dict(), 'model.safetensors')). "
                f"torch said: {str(error).splitlines()[0]}"
            ) from error
        except (RuntimeError, EOFError) as error:
            raise ValueError(f"{path!r} is not a readable torch checkpoint: {error}") from error
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{path!r} holds a {type(loaded).__name__}, expected a state_dict")
        return flatten(loaded)
    raise ValueError(
        f"checkpoint {path!r} has an unknown suffix; expected one of "
        f"{TORCH_SUFFIXES + (SAFETENSORS_SUFFIX,)}"
    )


def to_numpy(value) -> np.ndarray:
    """A torch tensor, jax array or numpy array as numpy, bfloat16 kept (needs no torch import)."""
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu()
        if str(value.dtype) == "torch.bfloat16":
            import ml_dtypes

            return value.float().numpy().astype(ml_dtypes.bfloat16)
        return value.numpy()
    return np.asarray(value)
