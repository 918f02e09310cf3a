"""Safe checkpoint reading: safetensors first, pickles only through torch's restricted unpickler.

Released research checkpoints are often PyTorch Lightning pickles whose ``callbacks`` dict is keyed
by the class ``pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint``. ``weights_only=True``
rejects that global, so we allow-list an inert stand-in class with the same qualified name. That is
the *only* extra global we accept: anything else is refused with a clear error, never retried with
``weights_only=False``.
"""
from __future__ import annotations

import os
import pickle
import re
import struct
import zipfile
from typing import Mapping

import torch

from .errors import BoundlessError

PICKLE_EXTENSIONS = (".ckpt", ".pt", ".pth", ".bin")


def _inert(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return type(name, (), {"__module__": module, "__doc__": f"Inert stand-in for {qualname}."})


# Globals that released checkpoints reference by name only (never instantiated by us).
ALLOWED_PICKLE_GLOBALS = [
    _inert("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"),
]


def read_checkpoint(path: str) -> Mapping:
    """Return the top-level object of a weight file (a dict of tensors, or a training dict)."""
    if not os.path.exists(path):
        raise BoundlessError(f"weight file not found: {path}")
    if not os.path.isfile(path):
        raise BoundlessError(f"{path} is not a regular file (a folder or a device); pick a weight file")
    name = os.path.basename(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as exc:  # safetensors raises SafetensorError / OSError
            raise BoundlessError(
                f"{name} is not a readable .safetensors file ({exc}); re-download or re-convert it") from exc
    if not path.endswith(PICKLE_EXTENSIONS):
        raise BoundlessError(f"{name}: unsupported weight file type; use .safetensors, .ckpt, .pt or .pth")
    try:
        with torch.serialization.safe_globals(ALLOWED_PICKLE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise BoundlessError(refusal_message(name, str(exc))) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise BoundlessError(f"{name} is truncated or corrupt ({type(exc).__name__}: {exc}); re-download it") from exc
    except (KeyError, IndexError, ValueError, TypeError, AssertionError, struct.error) as exc:
        # what the unpickler raises on bytes that are not a pickle at all: a text file, a web
        # page saved under a weight file's name ("Repository not found", "Moved Permanently"), ...
        raise BoundlessError(f"{name} is not a PyTorch weight file (its bytes are not a checkpoint torch can read); "
                             "a download that saved an error page or a text file looks like this. Re-download it, "
                             "or pick the right file") from exc


def refusal_message(name: str, torch_message: str) -> str:
    """Our words for a weights-only refusal: the global the file names, or "not a weight file".

    torch's own message suggests ``weights_only=False``, which would run whatever code the file
    holds; it is never shown to the user."""
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", torch_message)
    if found is None:
        return (f"{name} is not a PyTorch weight file (its bytes are not a checkpoint torch can read) or it is "
                "corrupt; re-download it, or pick the right file")
    return (f"{name} refers to the Python object {found.group(1)}, which Boundless does not load: it never runs "
            "code stored in a weight file. Convert the file to .safetensors with the authors' code, or report "
            "which object your release needs.")


def extract_state_dict(obj: Mapping, prefixes_to_drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Find the tensor dict inside a checkpoint and drop training-only keys.

    Accepts a bare state dict or a wrapper with ``state_dict``/``model``/``module`` (Lightning,
    DDP-style trainers), strips a leading ``module.`` left by DistributedDataParallel, and removes
    every key that starts with one of ``prefixes_to_drop`` (e.g. ``loss.`` in taming files).
    """
    if not isinstance(obj, Mapping):
        raise BoundlessError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    for wrapper in ("state_dict", "model", "module", "ema"):
        inner = obj.get(wrapper)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
            break
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise BoundlessError("checkpoint holds no tensors; is this a model weight file?")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return {k: v for k, v in tensors.items() if not k.startswith(prefixes_to_drop)}


def load_state_dict(path: str, prefixes_to_drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    """Read a weight file safely and return its model tensors."""
    return extract_state_dict(read_checkpoint(path), prefixes_to_drop)


def strict_load(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                ignore: tuple[str, ...] = ()) -> None:
    """Load every key and shape exactly; on mismatch raise one message that lists the differences."""
    own = module.state_dict()
    missing = [k for k in own if k not in state_dict and not k.startswith(ignore)]
    unexpected = [k for k in state_dict if k not in own and not k.startswith(ignore)]
    wrong = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or wrong:
        def show(items):
            return ", ".join(items[:4]) + (f" (+{len(items) - 4} more)" if len(items) > 4 else "")
        parts = [f"missing {show(missing)}" if missing else "",
                 f"unexpected {show(unexpected)}" if unexpected else "",
                 f"wrong shapes {show(wrong)}" if wrong else ""]
        raise BoundlessError(f"{what}: checkpoint does not match the model: "
                             + "; ".join(p for p in parts if p))
    module.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=False)
