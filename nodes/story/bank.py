"""The character bank: identity tokens written by the identity pass, read by every panel (pure torch).

An entry is the projected keys and values of the shared (randomly selected) tokens of all identity
images of one character, for one (step, layer, cond/uncond kind): ``(k [M, C], v [M, C])``. Only
entries that a panel will actually read are stored (steps and layer calls where CSA applies), and
they live in CPU RAM between uses, never on the GPU: ComfyUI keeps node outputs across prompts, so a
bank on the GPU would hold gigabytes of VRAM for as long as the graph is unchanged. Entries leave
the GPU by asynchronous copies into pinned memory and return the same way, so the sampler never
waits for them. The bank's size therefore
depends on the characters, identity images, steps, layers and sharing rates, never on the number of
panels that read it.
"""
from __future__ import annotations

import hashlib
import math
from typing import Optional, Sequence

import torch

from ..common.errors import BoundlessError

EntryKey = tuple[str, int, int, int]          # (character, step, layer, kind)


def tensor_digest(x: torch.Tensor) -> str:
    """A short hash of a tensor's values (which identity images a bank reader was given)."""
    return hashlib.sha1(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def same_schedule(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-6) for x, y in zip(a, b))


class CharacterBank:
    """Shared state between the identity pass and the panel passes of one story.

    ComfyUI deep-copies a model's patch options whenever the model is cloned (e.g. a LoRA or another
    patch node after ours); the bank must stay one object across those copies, so deep copies return
    the bank itself.
    """

    def __init__(self, offload_device: torch.device | str = "cpu"):
        self.offload_device = torch.device(offload_device)
        self.entries: dict[EntryKey, tuple[torch.Tensor, torch.Tensor]] = {}
        self.images: dict[str, int] = {}                        # character -> identity images
        self.schedules: dict[str, tuple[float, ...]] = {}       # character -> its identity pass's sigmas
        self._runs: dict[str, tuple] = {}
        self.writes = 0                  # entries stored so far: tells a fresh identity pass from a cached bank
        self.last_read: Optional[tuple[int, str]] = None   # (writes, identity latent digest) a reader last saw

    def __deepcopy__(self, memo):
        return self

    # ------------------------------------------------------------------ writing
    def begin_write(self, character: str, run: tuple, schedule: Sequence[float], images: int) -> None:
        """Called by every identity-pass layer call. A new run for a character (other schedule, size or
        identity images) drops that character's old entries; other characters are kept, so characters
        may also be written by separate identity passes."""
        if self._runs.get(character) == run:
            return
        for key in [key for key in self.entries if key[0] == character]:
            del self.entries[key]
        self._runs[character] = run
        self.schedules[character] = tuple(float(s) for s in schedule)
        self.images[character] = images

    def put(self, character: str, step: int, layer: int, kind: int, k_mc: torch.Tensor, v_mc: torch.Tensor) -> None:
        self.entries[(character, step, layer, kind)] = (self._offload(k_mc), self._offload(v_mc))
        self.writes += 1

    def _offload(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of ``x`` on the offload device, made without waiting (pinned memory from a GPU)."""
        if x.device == self.offload_device:
            return x
        kept = torch.empty(x.shape, dtype=x.dtype, device=self.offload_device,
                           pin_memory=x.is_cuda and self.offload_device.type == "cpu")
        return kept.copy_(x, non_blocking=True)

    # ------------------------------------------------------------------ reading
    def check_fresh(self, identity_digest: str) -> None:
        """Refuse identity images that did not write this bank.

        ComfyUI caches the Consistent Self-Attention node, so after the identity sampler is rewired
        to another model its bank still holds the previous run. New identity images with no new bank
        entries since the last read mean the sampler did not use the bank's model."""
        if self.last_read is not None and self.last_read[1] != identity_digest and self.last_read[0] == self.writes:
            raise BoundlessError(
                "Read Character Bank: the identity images changed but the character bank did not: the identity "
                "sampler no longer uses the identity_model of Consistent Self-Attention, so the panels would copy "
                "the previous run's characters. Connect that model to the identity sampler.")
        self.last_read = (self.writes, identity_digest)

    def check_readable(self, schedule: Sequence[float], characters: Sequence[str]) -> None:
        """Raise a clear error when panels cannot read this bank with this sampling schedule."""
        if not self.images:
            raise BoundlessError(
                "The character bank is empty: sample the identity images first with the MODEL from "
                "'Consistent Self-Attention', and feed that sampler's LATENT into 'Read Character Bank' "
                "so it runs before the panels.")
        missing = [c for c in characters if c not in self.images]
        if missing:
            raise BoundlessError(
                f"The character bank has no identity images of {', '.join(missing)} (it holds "
                f"{', '.join(self.images)}); give every character identity lines in the story.")
        for character in characters:
            written = self.schedules[character]
            if not same_schedule(written, schedule):
                raise BoundlessError(
                    f"The panels are sampled with a different schedule ({len(schedule) - 1} steps, first sigma "
                    f"{float(schedule[0]):.4g}) than the identity images of {character} ({len(written) - 1} "
                    f"steps, first sigma {written[0]:.4g}). Use the same steps, scheduler and denoise for both "
                    "samplers.")

    def get(self, characters: Sequence[str], step: int, layer: int, kind: int,
            device: torch.device | str | None = None) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
        """Bank tokens of ``characters`` (in that order) for one (step, layer, kind) on ``device``, or None.

        Entries are uploaded one by one and joined on the device: joining them on the host would read
        pinned buffers that an asynchronous copy from the GPU may still be filling."""
        found = [self.entries[(c, step, layer, kind)] for c in characters if (c, step, layer, kind) in self.entries]
        if not found:
            return None
        moved = [(k.to(device, non_blocking=True), v.to(device, non_blocking=True)) if device is not None else (k, v)
                 for k, v in found]
        if len(moved) == 1:
            return moved[0]
        return torch.cat([k for k, _ in moved]), torch.cat([v for _, v in moved])

    # ------------------------------------------------------------------ reporting
    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.entries.values())

    def describe(self) -> str:
        """One line for the user: what the bank holds and how much memory it takes where."""
        if not self.images:
            return "character bank: empty (the identity pass has not run)"
        steps = {key[1] for key in self.entries}
        layers = {key[2] for key in self.entries}
        dtypes = sorted({str(k.dtype).replace("torch.", "") for k, _ in self.entries.values()})
        people = ", ".join(f"{name} ({count} identity image{'s' if count != 1 else ''})"
                           for name, count in self.images.items())
        total_steps = max(len(schedule) - 1 for schedule in self.schedules.values())
        return (f"character bank: {people}; {len(self.entries)} entries over {len(steps)} of "
                f"{total_steps} steps and {len(layers)} layers; "
                f"{self.nbytes / 2**20:.1f} MiB {'/'.join(dtypes) or ''} on {self.offload_device}")
