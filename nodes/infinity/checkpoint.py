"""Save and load NUWA-Infinity token decoders (safetensors; config from keys and shapes).

The loader never trusts a side config: depth is the number of ``blocks.N`` entries, widths come
from weight shapes, and the three integers shapes cannot express (patch shape, trained extents,
head count) are int64 buffers inside the weights, cross-checked against the shapes they imply.
Optional safetensors metadata carries the tokenizer fingerprint and pixels per token.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Optional

import torch

from ..common.errors import BoundlessError
from ..common.weights import load_state_dict, strict_load
from .config import Extents, InfinityConfig
from .model import InfinityTransformer

KIND = "boundless.infinity"


def _shape(shapes: Mapping[str, tuple[int, ...]], key: str, what: str) -> tuple[int, ...]:
    if key not in shapes:
        raise BoundlessError(f"not a NUWA-Infinity checkpoint: {key} is missing ({what}); "
                             "load a file saved by the Boundless Infinity trainer")
    return tuple(shapes[key])


def infer_config(state_dict: Mapping[str, torch.Tensor]) -> InfinityConfig:
    """Rebuild the config from tensor shapes plus the model's integer buffers."""
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    n_embed, dim = _shape(shapes, "tok_emb.weight", "token embedding")
    positions = _shape(shapes, "pos_emb", "position table")[0]
    n_orders = _shape(shapes, "order_emb", "order table")[0]
    depth = len({int(m.group(1)) for k in shapes if (m := re.match(r"blocks\.(\d+)\.", k))})
    if depth == 0:
        raise BoundlessError("not a NUWA-Infinity checkpoint: no transformer blocks found")
    mlp_dim = _shape(shapes, "blocks.0.mlp.fc1.weight", "MLP")[0]
    text_dim = shapes["blocks.0.cross.kv.weight"][1] if "blocks.0.cross.kv.weight" in shapes else 0
    for key in ("patch_shape", "trained_extents", "num_heads"):
        _shape(shapes, key, "model geometry buffer")
    patch_h, patch_w = (int(x) for x in state_dict["patch_shape"].tolist())
    extents = Extents(*(int(x) for x in state_dict["trained_extents"].tolist()))
    heads = int(state_dict["num_heads"])
    if patch_h * patch_w + 1 != positions:
        raise BoundlessError(f"checkpoint is inconsistent: patch {patch_h}×{patch_w} needs {patch_h * patch_w + 1} "
                             f"positions but the position table has {positions}; the file is corrupt")
    cells = _shape(shapes, "blocks.0.attn.rel_k", "relative position table")[0]
    if cells != extents.cells:
        raise BoundlessError(f"checkpoint is inconsistent: trained extents {extents.as_tuple()} need "
                             f"{extents.cells} relative positions but the table has {cells}; the file is corrupt")
    return InfinityConfig(n_embed=n_embed, dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, patch_h=patch_h,
                          patch_w=patch_w, trained_extents=extents, text_dim=text_dim, n_orders=n_orders,
                          frame_align="frame_align.weight" in shapes,
                          align_radius=(shapes["frame_align.weight"][-1] - 1) // 2
                          if len(shapes.get("frame_align.weight", ())) == 4 else 0,
                          rope_base=int(state_dict["rope_base"]) if "rope_base" in shapes else 0,
                          mirrored_scan=bool(state_dict["mirrored_scan"]) if "mirrored_scan" in shapes else False)


def build_model(cfg: InfinityConfig, state_dict: Optional[Mapping[str, torch.Tensor]] = None,
                what: str = "NUWA-Infinity checkpoint") -> InfinityTransformer:
    model = InfinityTransformer(cfg)
    if state_dict is not None:
        strict_load(model, state_dict, what)
    return model.eval()


def read_metadata(path: str) -> dict[str, str]:
    """The safetensors header metadata ({} for other formats or none)."""
    if not path.endswith(".safetensors"):
        return {}
    from safetensors import safe_open
    with safe_open(path, framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_infinity(path: str) -> InfinityTransformer:
    """Load a checkpoint; the model's config comes from the weights themselves (CPU, float32)."""
    state_dict = load_state_dict(path)
    model = build_model(infer_config(state_dict), state_dict, what=f"NUWA-Infinity checkpoint {path}")
    model.fingerprint()          # fixed now, from the float32 weights of the file
    meta = read_metadata(path)
    if "config" in meta:
        try:
            stored = InfinityConfig.from_json(meta["config"])
        except (ValueError, TypeError, KeyError) as exc:
            raise BoundlessError(f"{path}: the config in the metadata is unreadable ({exc}); re-save the "
                                 "checkpoint") from exc
        if stored != model.config:
            raise BoundlessError(f"{path}: the config in the metadata ({stored}) disagrees with the weights "
                                 f"({model.config}); the file was edited or is corrupt")
    model.tokenizer = meta.get("tokenizer", "")
    model.text_encoder = meta.get("text_encoder", "")
    try:
        model.factor = int(meta.get("factor", 0))
    except ValueError as exc:
        raise BoundlessError(f"{path}: metadata 'factor' is not an integer; re-save the checkpoint") from exc
    return model


def add_text_branch(model: InfinityTransformer, text_dim: int) -> InfinityTransformer:
    """A text-conditioned copy of an unconditional model that computes exactly what it computed.

    Every block gains a text cross-attention whose output projection starts at zero, so training
    on captions starts from the unconditional model's skills instead of from scratch.
    """
    if model.config.text_dim:
        raise BoundlessError("the model already has a text branch")
    grown = InfinityTransformer(dataclasses.replace(model.config, text_dim=text_dim))
    new_keys = tuple(f"blocks.{i}.{part}." for i in range(model.config.depth) for part in ("cross", "norm_text"))
    strict_load(grown, model.state_dict(), "adding a text branch", ignore=new_keys)
    for block in grown.blocks:
        torch.nn.init.zeros_(block.cross.proj.weight)
        torch.nn.init.zeros_(block.cross.proj.bias)
    grown.tokenizer, grown.factor = model.tokenizer, model.factor
    return grown


def add_frame_align(model: InfinityTransformer, radius: int = 0) -> InfinityTransformer:
    """A copy of a video model with frame alignment (``model.aligned_input``) reaching ``radius``
    tokens around each position, that computes exactly what it computed: a new projection starts
    at zero, and a same-position projection widened to a neighbourhood becomes its centre tap."""
    cfg = model.config
    if cfg.frame_align and radius <= cfg.align_radius:
        raise BoundlessError(f"the model already has frame alignment reaching {cfg.align_radius} tokens; "
                             "frame alignment can only be added or widened")
    grown = InfinityTransformer(dataclasses.replace(cfg, frame_align=True, align_radius=radius)).to(model.pos_emb.dtype)
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith("frame_align.")}
    strict_load(grown, kept, "adding frame alignment", ignore=("frame_align.",))
    if cfg.frame_align:
        with torch.no_grad():
            old_weight = model.frame_align.weight
            if old_weight.ndim == 2:
                old_weight = old_weight[:, :, None, None]
            offset = radius - cfg.align_radius
            reach = old_weight.shape[-1]
            grown.frame_align.weight[:, :, offset:offset + reach, offset:offset + reach] = old_weight
            grown.frame_align.bias.copy_(model.frame_align.bias)
    grown.tokenizer, grown.factor, grown.text_encoder = model.tokenizer, model.factor, model.text_encoder
    return grown


def add_mirrored_scan(model: InfinityTransformer) -> InfinityTransformer:
    """A copy of a raster-scan model that reads patches of order ``left`` / ``up`` mirrored
    (``token_scan``). The weights are the same, but those orders now see their tokens in another
    order, so the copy must be trained further before it draws them well; ``right`` / ``down``
    compute exactly what they computed."""
    if model.config.mirrored_scan:
        raise BoundlessError("the model already reads its patches in mirrored scan")
    grown = InfinityTransformer(dataclasses.replace(model.config, mirrored_scan=True)).to(model.pos_emb.dtype)
    strict_load(grown, model.state_dict(), "switching to mirrored scan", ignore=("mirrored_scan",))
    grown.tokenizer, grown.factor, grown.text_encoder = model.tokenizer, model.factor, model.text_encoder
    return grown


def save_infinity(model: InfinityTransformer, path: str, extra: Optional[Mapping[str, str]] = None) -> None:
    """Write weights + buffers as safetensors, with kind, config, tokenizer and factor as metadata."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"kind": KIND, "config": model.config.to_json(), "tokenizer": model.tokenizer,
            "factor": str(model.factor), "text_encoder": model.text_encoder}
    meta.update(extra or {})
    save_file(tensors, path, metadata=meta)
