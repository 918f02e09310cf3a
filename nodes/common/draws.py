"""Where the samplers' random numbers come from: the model's device (default) or the CPU.

The authors' samplers draw on the model's device, and so does the pack by default ("model device"):
the generator lives beside the model, so a token costs no trip to the host. A categorical draw is
``torch.multinomial``'s own one-sample path written out (exponential variates filled in the
probabilities' memory order, then the argmax of ``p / q``) without the validity check that makes
``torch.multinomial`` wait for the device; on the CPU it returns ``torch.multinomial``'s tokens bit
for bit, batch-1 strided views included.

"cpu" keeps the generator on the CPU and brings each probability tensor to it: the same seed gives
the same tokens on any device and precision whose probabilities agree, at the price of one host
round trip per draw. The seed contract of each mode is in the README ("Seeds and devices").
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch

from .errors import BoundlessError

MODEL_DEVICE = "model device"
CPU = "cpu"
MODES = (MODEL_DEVICE, CPU)
MODE_TOOLTIP = ("Where random numbers are drawn. 'model device' (default, as the authors' code does): on "
                "the GPU with no waits; the same seed gives the same result on the same kind of device. "
                "'cpu': drawn on the CPU, so the same seed gives the same tokens on any device, at one "
                "transfer to the CPU per draw.")


def stream_seed(*parts) -> int:
    """A 63-bit seed named by ``parts`` (joined with ':'), stable across runs, resumes and machines."""
    digest = hashlib.sha256(":".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class Draws:
    """One seeded stream of draws for one sampling run; results always land on ``device``."""

    def __init__(self, seed: int, device: torch.device | str, mode: str = MODEL_DEVICE):
        if mode not in MODES:
            raise BoundlessError(f"random numbers must be drawn on one of {list(MODES)}, got {mode!r}")
        self.device = torch.device(device)
        self.where = torch.device("cpu") if mode == CPU else self.device
        self.generator = torch.Generator(self.where).manual_seed(int(seed) % 2 ** 64)

    def _here(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.device == self.where else x.to(self.where)

    def _there(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.device == self.device else x.to(self.device, non_blocking=True)

    def categorical(self, probs_nk: torch.Tensor) -> torch.Tensor:
        """One index per row of ``probs_nk`` (non-negative, need not sum to 1): ``[N]`` int64.

        Equal to ``torch.multinomial(probs_nk, 1, generator=g)[:, 0]`` for the same generator state;
        the variates follow ``probs_nk``'s memory order, so pass the very view the reference draws from.
        """
        probs = self._here(probs_nk)
        q = torch.empty_like(probs).exponential_(1, generator=self.generator)
        return self._there(probs.div(q).argmax(dim=-1))

    def randint(self, high: int, shape: Sequence[int]) -> torch.Tensor:
        return self._there(torch.randint(0, high, tuple(shape), generator=self.generator, device=self.where))

    def rand(self, shape: Sequence[int]) -> torch.Tensor:
        return self._there(torch.rand(tuple(shape), generator=self.generator, device=self.where))

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        return self._there(torch.randn(tuple(shape), generator=self.generator, device=self.where))

    def uniform(self, shape: Sequence[int]) -> torch.Tensor:
        """``torch.zeros(shape).uniform_(0, 1)`` from this stream (float32)."""
        return self._there(torch.empty(tuple(shape), device=self.where).uniform_(0, 1, generator=self.generator))

    def exponential_like(self, x: torch.Tensor) -> torch.Tensor:
        """Exp(1) variates with ``x``'s shape, float32, in ``x``'s memory order."""
        return self._there(torch.empty_like(x, dtype=torch.float32, device=self.where).exponential_(
            1, generator=self.generator))

    def bernoulli(self, p: float, shape: Sequence[int]) -> torch.Tensor:
        """``torch.bernoulli(torch.full(shape, p))`` from this stream (float32 zeros and ones)."""
        return self._there(torch.bernoulli(torch.full(tuple(shape), float(p), device=self.where),
                                           generator=self.generator))
