"""A CPU stand-in for a GPU, for tests: device placement checks and a host-sync counter.

On a CPU every tensor is on the same device, so code that builds a tensor on the wrong device, or
makes the host wait for the GPU inside a loop, passes every CPU test and only fails (or crawls) on
a user's GPU. Inside ``StandInDevice()``, tensors moved to ``STANDIN`` (``lazy:0``, a device type
that needs no runtime) keep their data on the CPU but say they live elsewhere, and the mode treats
them as a GPU would:

* an op mixing a stand-in tensor with a CPU tensor of one or more dimensions raises, as CUDA does
  ("Expected all tensors to be on the same device"); 0-dim CPU tensors are allowed, as in CUDA;
* the reads that make a GPU's host wait are counted: a scalar read (``item``, ``bool``, ``int``,
  ``float``), a copy to host memory (``.cpu()``, ``.tolist()``, ``.to("cpu")``), data-dependent
  shapes (``nonzero``, boolean-mask indexing, ``masked_select``, ``unique``) and
  ``torch.multinomial`` (its validity check reads a scalar back). Each count records the pack's
  source line, so a broken budget says where. Uploads (host to stand-in copies) are counted too.

``torch.Generator(device=STANDIN)`` gives a CPU generator inside the mode, so seeded draws made "on
the device" give the very numbers they give on a CPU.
"""
from __future__ import annotations

import collections
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

STANDIN = torch.device("lazy", 0)
aten = torch.ops.aten
_DATA_DEPENDENT = {aten.nonzero, aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive,
                   aten.multinomial, aten.equal, aten.is_nonzero, aten._local_scalar_dense}
_REAL_GENERATOR = torch.Generator


class OnStandIn(torch.Tensor):
    """A tensor whose data is the CPU tensor ``inner`` but whose device is ``STANDIN``."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        wrapper = torch.Tensor._make_wrapper_subclass(
            cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(), dtype=inner.dtype,
            device=STANDIN, requires_grad=inner.requires_grad)
        wrapper.inner = inner
        return wrapper

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self):
        return f"OnStandIn({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a stand-in tensor outside StandInDevice()")


class _Generator(_REAL_GENERATOR):
    """``torch.Generator`` inside the mode: a CPU generator when asked for one on the stand-in."""

    def __new__(cls, device="cpu"):
        return _REAL_GENERATOR.__new__(cls, "cpu" if torch.device(device).type == STANDIN.type else device)

    def __init__(self, device="cpu"):
        pass


class _FromData(TorchFunctionMode):
    """What happens above the dispatcher: ``torch.tensor(data, device=STANDIN)`` (built on the CPU and
    moved, as the real constructor does for a GPU) and ``.tolist()`` (a read-back)."""

    def __init__(self, owner: "StandInDevice"):
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.tolist and isinstance(args[0], OnStandIn):
            self.owner._sync(".tolist()")
            return args[0].inner.tolist()
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor, torch.asarray) and device is not None \
                and torch.device(device).type == STANDIN.type:
            return func(*args, **{**kwargs, "device": "cpu"}).to(STANDIN)
        return func(*args, **kwargs)


class StandInDevice(TorchDispatchMode):
    """``with StandInDevice() as dev: model.to(STANDIN); ...`` then ``dev.syncs`` / ``dev.report()``."""

    def __init__(self, pack_marker: str = "/nodes/"):
        super().__init__()
        self.syncs = 0
        self.uploads = 0
        self.where: collections.Counter[str] = collections.Counter()
        self._marker = pack_marker

    # ------------------------------------------------------------------ bookkeeping
    def _site(self) -> str:
        for frame in reversed(traceback.extract_stack()[:-3]):
            if self._marker in frame.filename:
                return f"{frame.filename.split(self._marker)[-1]}:{frame.lineno}"
        return "outside the pack"

    def _sync(self, what: str) -> None:
        self.syncs += 1
        self.where[f"{what} at {self._site()}"] += 1

    def report(self) -> str:
        return "; ".join(f"{n}x {w}" for w, n in self.where.most_common()) or "no host syncs"

    def reset(self) -> None:
        self.syncs, self.uploads = 0, 0
        self.where.clear()

    # ------------------------------------------------------------------ the mode
    def __enter__(self):
        self._swap = torch.__future__.get_swap_module_params_on_conversion()
        torch.__future__.set_swap_module_params_on_conversion(True)
        torch.Generator = _Generator
        self._from_data = _FromData(self)
        self._from_data.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        result = super().__exit__(*exc)
        self._from_data.__exit__(*exc)
        torch.Generator = _REAL_GENERATOR
        torch.__future__.set_swap_module_params_on_conversion(self._swap)
        return result

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        packet = func.overloadpacket
        on_standin = any(isinstance(x, OnStandIn) for x in _leaves((args, kwargs)))
        host_arrays = [x for x in _leaves((args, kwargs))
                       if isinstance(x, torch.Tensor) and not isinstance(x, OnStandIn) and x.dim() > 0]
        target = kwargs.get("device")
        to_standin = target is not None and torch.device(target).type == STANDIN.type
        if to_standin:
            kwargs["device"] = torch.device("cpu")

        if packet is aten._to_copy:
            source = args[0]
            leaving = isinstance(source, OnStandIn) and target is not None and torch.device(target).type == "cpu"
            if leaving:
                self._sync("copy to the host")
            elif to_standin and not isinstance(source, OnStandIn):
                self.uploads += 1
            out = func(*_unwrap(args), **_unwrap(kwargs))
            return out if leaving or not (on_standin or to_standin) else OnStandIn(out)
        if packet is aten.copy_:
            dst, src = args[0], args[1]
            if isinstance(src, OnStandIn) and not isinstance(dst, OnStandIn) and not kwargs.get("non_blocking") \
                    and not (len(args) > 2 and args[2]):   # non_blocking into a pinned buffer does not wait
                self._sync("copy to the host")
            elif isinstance(dst, OnStandIn) and not isinstance(src, OnStandIn) and src.dim() > 0:
                self.uploads += 1
            func(*_unwrap(args), **_unwrap(kwargs))
            return dst

        if on_standin:
            if packet in _DATA_DEPENDENT:
                self._sync(packet.__name__)
            elif packet in (aten.index, aten.index_put, aten.index_put_) and _has_bool_index(args[1]):
                self._sync(f"{packet.__name__} with a boolean mask")
            if host_arrays and packet not in (aten.index, aten.index_put, aten.index_put_):
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two devices, "
                                   f"{STANDIN} and cpu! ({func} at {self._site()})")
        out = func(*_unwrap(args), **_unwrap(kwargs))
        if not (on_standin or to_standin) or packet is aten._local_scalar_dense:
            return out
        if "out" in kwargs:
            return kwargs["out"]
        if func._schema.returns and func._schema.returns[0].alias_info is not None \
                and func._schema.returns[0].alias_info.is_write:
            return args[0]          # in-place: the caller's tensor
        return tree_map(lambda x: OnStandIn(x) if isinstance(x, torch.Tensor) and not isinstance(x, OnStandIn)
                        else x, out)


def _leaves(tree):
    found = []
    tree_map(lambda x: found.append(x), tree)
    return found


def _unwrap(tree):
    return tree_map(lambda x: x.inner if isinstance(x, OnStandIn) else x, tree)


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
