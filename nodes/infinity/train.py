"""Train a NUWA-Infinity token decoder (CPU, one GPU, or many through torchrun + DDP).

Data is either a folder of images tokenized with a VQGAN checkpoint (``--images DIR --vqgan
FILE``), or precomputed tokens (``--tokens FILE.safetensors`` with ``tokens`` int64 ``[N, h, w]``
or ``[N, F, h, w]``, optionally ``text`` float ``[N, L, C]`` with ``null_text`` ``[L, C]`` (the empty
caption, for ``--drop-text``), and metadata ``tokenizer``/``factor``/``text_encoder``).
Every step draws random ``--canvas`` crops and one random ADC order and runs ``training.chain_loss``
(backward per patch, detached context caches, one all-reduce per chain under DDP), then one Adam
step. Checkpoints are safetensors that ``checkpoint.load_infinity`` reads back. With ``--val-tokens``
the output keeps the step with the lowest held-out cross-entropy (early stopping: small demo models
over-fit their few training pictures long before the loss stops falling).

Text: with ``--text-encoder`` the model is text-conditioned. Each image's caption (``IMAGE.txt``
next to it) is encoded once into token states ``[L, C]`` (padded to ``text.minilm.CONTEXT_TOKENS``
word pieces, as at sampling time); ``--drop-text`` trains a share of the items on the empty caption,
so that the empty prompt means "unconditional". ``--resume`` from an unconditional model adds a
text branch that starts as a no-op (``checkpoint.add_text_branch``).

Run: ``.venv/bin/python scripts/train_infinity.py --tokens t.safetensors --out m.safetensors``;
multi-GPU: ``torchrun --nproc_per_node N scripts/train_infinity.py ...``.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image

from ..common.errors import BoundlessError
from ..common.tokens import fingerprint
from . import rope
from .adc import ORDERS
from .checkpoint import add_frame_align, add_mirrored_scan, add_text_branch, load_infinity, save_infinity
from .config import Extents, InfinityConfig
from .model import InfinityTransformer
from .training import CanvasSampler, chain_loss, heldout_nll

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def tokenize_folder(folder: pathlib.Path, vqgan_path: str, max_side: int, multiple: int,
                    device: torch.device) -> tuple[list[torch.Tensor], list[pathlib.Path], str, int]:
    """Token maps ``[1, h, w]`` of every image (and the image files they came from), resized so the
    long side is at most ``max_side`` and centre-cropped to a multiple of ``multiple`` pixels (one patch)."""
    from ..vq.loader import KIND, load_vqgan
    vqgan = load_vqgan(vqgan_path).to(device)
    files = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise BoundlessError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    step = multiple * vqgan.factor
    grids, used = [], []
    for path in files:
        image = Image.open(path).convert("RGB")
        scale = min(1.0, max_side / max(image.size))
        if scale < 1.0:
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.LANCZOS)
        w, h = (image.width // step) * step, (image.height // step) * step
        if w == 0 or h == 0:
            continue
        left, top = (image.width - w) // 2, (image.height - h) // 2
        array = np.asarray(image.crop((left, top, left + w, top + h)), dtype=np.float32) / 127.5 - 1.0
        x_bchw = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(device)
        with torch.no_grad():
            grids.append(vqgan.encode(x_bchw)[1].cpu())                   # [1, h, w]
        used.append(path)
    return grids, used, fingerprint(KIND, vqgan.quantize.embedding.weight), vqgan.factor


def caption_states(files: list[pathlib.Path], encoder_path: str) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Text states ``[N, L, C]`` of each image's caption (the ``.txt`` file next to it), the states of
    the empty caption ``[L, C]`` (for caption dropout), and the text encoder's identity."""
    from ..text.minilm import default_path, load_text_encoder
    encoder = load_text_encoder(default_path() if encoder_path == "minilm" else encoder_path)
    missing = [str(f.with_suffix(".txt")) for f in files if not f.with_suffix(".txt").is_file()]
    if missing:
        raise BoundlessError(f"--text-encoder needs a caption next to every image; missing {', '.join(missing[:4])}"
                             + (f" (+{len(missing) - 4} more)" if len(missing) > 4 else ""))
    captions = [f.with_suffix(".txt").read_text(encoding="utf-8").strip() for f in files]
    return encoder.encode(captions).states, encoder.encode([""]).states[0], encoder.name


def load_token_file(path: str) -> tuple[list[torch.Tensor], torch.Tensor | None, str, int]:
    """(token maps, caption states ``[N, L, C]`` or None, tokenizer identity, VQGAN factor)."""
    from safetensors import safe_open
    from safetensors.torch import load_file
    tensors = load_file(path)
    with safe_open(path, framework="pt") as handle:
        meta = dict(handle.metadata() or {})
    if "tokens" not in tensors:
        raise BoundlessError(f"{path} has no 'tokens' tensor; save int64 [N, h, w] under the key 'tokens'")
    tokens = tensors["tokens"].long()
    if tokens.ndim == 3:
        tokens = tokens.unsqueeze(1)
    return list(tokens), tensors.get("text"), meta.get("tokenizer", ""), int(meta.get("factor", 0))


def token_file_text(path: str) -> tuple[torch.Tensor | None, str]:
    """The empty caption's states ``[L, C]`` (for caption dropout; key ``null_text``) and the text
    encoder's identity (metadata ``text_encoder``) of a token file with captions."""
    from safetensors import safe_open
    with safe_open(path, framework="pt") as handle:
        null_text = handle.get_tensor("null_text") if "null_text" in handle.keys() else None
        return null_text, dict(handle.metadata() or {}).get("text_encoder", "")


def load_validation(path: str, cfg: InfinityConfig) -> torch.Tensor:
    """Held-out canvases ``[N, F, h, w]`` for early stopping (whole maps, scanned like training chains)."""
    if cfg.text_dim:
        raise BoundlessError("--val-tokens measures models without text; drop it for a text-conditioned model")
    grids, _, _, _ = load_token_file(path)
    if len({tuple(g.shape) for g in grids}) != 1:
        raise BoundlessError(f"{path}: validation token maps must all have one shape, got "
                             f"{sorted({tuple(g.shape) for g in grids})}")
    canvases = torch.stack(grids)
    if canvases.shape[-2] % cfg.patch_h or canvases.shape[-1] % cfg.patch_w:
        raise BoundlessError(f"{path}: validation maps of {tuple(canvases.shape[-2:])} tokens are not whole "
                             f"{cfg.patch_h}×{cfg.patch_w}-token patches")
    return canvases


def distributed_setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device); initialises torch.distributed when launched by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        rank = dist.get_rank()
    else:
        rank = 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a NUWA-Infinity token decoder with ADC patch chains.")
    data = p.add_argument_group("data")
    data.add_argument("--tokens", help="precomputed token file (.safetensors with 'tokens' [N,h,w])")
    data.add_argument("--images", type=pathlib.Path, help="folder of images to tokenize with --vqgan")
    data.add_argument("--vqgan", help="VQGAN checkpoint used to tokenize --images")
    data.add_argument("--max-side", type=int, default=1024, help="downscale images so the long side fits")
    data.add_argument("--text-encoder", help="train a text-conditioned model on captions (IMAGE.txt next to each "
                                             "--images file), encoded by this BERT checkpoint ('minilm' = the "
                                             "packaged all-MiniLM-L6-v2)")
    data.add_argument("--drop-text", type=float, default=0.1,
                      help="with --text-encoder: probability of training an item on the empty caption "
                           "(so '' means unconditional)")
    p.add_argument("--out", required=True, help="output checkpoint (.safetensors)")
    p.add_argument("--resume", help="start from this checkpoint (its config wins over the size flags)")
    size = p.add_argument_group("model")
    size.add_argument("--dim", type=int, default=256)
    size.add_argument("--depth", type=int, default=6)
    size.add_argument("--heads", type=int, default=8)
    size.add_argument("--mlp-dim", type=int, default=0, help="default 4 × dim")
    size.add_argument("--patch", type=int, nargs=2, default=(16, 16), metavar=("H", "W"),
                      help="tokens per patch side")
    size.add_argument("--extents", type=int, nargs=3, default=(1, 1, 1), metavar=("EW", "EH", "EF"))
    size.add_argument("--frame-align", action="store_true",
                      help="video: give each token position the previous frame's state of the same position "
                           "(added to a --resume model as a no-op if it lacks it)")
    size.add_argument("--align-radius", type=int, default=0, metavar="R",
                      help="with --frame-align: also give it the previous frame's states of the tokens up to R "
                           "around the position (a 2R+1 square), so content that moved up to R tokens a frame "
                           "(a camera pan) is found; a --resume model's alignment is widened as a no-op")
    size.add_argument("--rope-base", type=int, default=rope.DEFAULT_BASE,
                      help="token geometry: rotary embeddings on canvas coordinates with this base, so each patch "
                           "finds the neighbouring tokens it continues (0 = the older design without it; a "
                           "--resume model keeps what it was trained with)")
    size.add_argument("--mirrored-scan", action="store_true",
                      help="read patches of order left / up in raster mirrored toward the finished neighbour, so "
                           "every row starts beside it (token_scan.py; a --resume raster model is switched over "
                           "and must then learn those orders again)")
    size.add_argument("--n-embed", type=int, default=0, help="codebook size (default: max token + 1)")
    run = p.add_argument_group("training")
    run.add_argument("--canvas", type=int, nargs=2, default=(4, 4), metavar=("COLS", "ROWS"),
                     help="training canvas in patches")
    run.add_argument("--orders", default=",".join(ORDERS), help="comma list of ADC orders to draw from")
    run.add_argument("--wrap", action="store_true",
                     help="360° panoramas: train with horizontal wrap-around on whole-width crops "
                          "(--canvas COLS must be the panoramas' width in patches)")
    run.add_argument("--wrap-every", type=int, default=0, metavar="N",
                     help="mix both: every Nth step trains one whole-width 360° panorama (the widest maps, "
                          "--canvas ROWS high, randomly rolled) with wrap-around instead of a batch of crops, so "
                          "one model learns ordinary canvases and the wrap seam (0 = never)")
    run.add_argument("--batch", type=int, default=4)
    run.add_argument("--lr", type=float, default=3e-4)
    run.add_argument("--label-smoothing", type=float, default=0.0)
    run.add_argument("--input-noise", type=float, default=0.0,
                     help="share of the tokens fed to the model replaced by random codes (the loss still asks for "
                          "the true ones), so sampling recovers from its own mistakes; e.g. 0.1")
    run.add_argument("--steps", type=int, default=1000)
    run.add_argument("--minutes", type=float, default=0.0, help="also stop after this wall time (0 = no limit)")
    run.add_argument("--save-every", type=int, default=500)
    run.add_argument("--val-tokens", help="held-out token file (as --tokens; maps of one shape, no text): early "
                                          "stopping — every --save-every steps the held-out cross-entropy is "
                                          "measured and --out keeps the checkpoint where it was lowest")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--threads", type=int, default=2, help="CPU threads per process")
    return p


def wrap_sampler(grids, args, cfg, texts, rank: int) -> CanvasSampler:
    """The whole-width 360° panoramas that ``--wrap-every`` mixes into crop training."""
    width = max(int(g.shape[-1]) for g in grids)
    if width % cfg.patch_w:
        raise BoundlessError(f"--wrap-every: the widest training maps ({width} tokens) are not whole "
                             f"{cfg.patch_w}-token patches wide, so they cannot wrap around; crop them to a "
                             "multiple of the patch width")
    return CanvasSampler(grids, width // cfg.patch_w, args.canvas[1], cfg.patch_h, cfg.patch_w,
                         args.orders.split(","), texts, seed=args.seed + rank + 1, wrap=True)


def main(argv=None) -> InfinityTransformer:
    """Train; returns the model as saved in ``--out`` (with ``--val-tokens``: the best step, not the last)."""
    args = build_parser().parse_args(argv)
    if not 0.0 <= args.input_noise < 1.0:
        raise BoundlessError(f"--input-noise is a share of tokens in [0, 1), got {args.input_noise}")
    if args.align_radius and not args.frame_align:
        raise BoundlessError("--align-radius is the reach of frame alignment; give --frame-align too")
    if args.wrap_every < 0:
        raise BoundlessError(f"--wrap-every is a step count (0 = never), got {args.wrap_every}")
    if args.wrap_every and args.wrap:
        raise BoundlessError("--wrap-every mixes wrapped panoramas into crop training; with --wrap every step "
                             "is wrapped already, so give one of the two")
    torch.set_num_threads(args.threads)
    rank, world, device = distributed_setup()
    torch.manual_seed(args.seed + rank)
    resumed = load_infinity(args.resume) if args.resume else None
    patch_h, patch_w = (resumed.config.patch_h, resumed.config.patch_w) if resumed else args.patch
    null_text, text_encoder = None, ""
    if args.tokens:
        grids, texts, tokenizer, factor = load_token_file(args.tokens)
        if texts is not None:
            null_text, text_encoder = token_file_text(args.tokens)
    elif args.images and args.vqgan:
        grids, files, tokenizer, factor = tokenize_folder(args.images, args.vqgan, args.max_side,
                                                          max(patch_h, patch_w), device)
        texts = None
        if args.text_encoder:
            texts, null_text, text_encoder = caption_states(files, args.text_encoder)
    else:
        raise BoundlessError("give training data: --tokens FILE, or --images DIR with --vqgan FILE")

    if resumed is not None:
        model = resumed
        if texts is not None and not model.config.text_dim:
            model = add_text_branch(model, int(texts.shape[-1]))
        if args.frame_align and (not model.config.frame_align or args.align_radius > model.config.align_radius):
            model = add_frame_align(model, args.align_radius)
        if args.mirrored_scan and not model.config.mirrored_scan:
            model = add_mirrored_scan(model)
    else:
        n_embed = args.n_embed or int(max(int(g.max()) for g in grids)) + 1
        cfg = InfinityConfig(n_embed=n_embed, dim=args.dim, depth=args.depth, heads=args.heads,
                             mlp_dim=args.mlp_dim or 4 * args.dim, patch_h=patch_h, patch_w=patch_w,
                             trained_extents=Extents(*args.extents),
                             text_dim=0 if texts is None else int(texts.shape[-1]), frame_align=args.frame_align,
                             rope_base=args.rope_base, align_radius=args.align_radius if args.frame_align else 0,
                             mirrored_scan=args.mirrored_scan)
        model = InfinityTransformer(cfg)
    cfg = model.config
    model.tokenizer, model.factor = tokenizer or model.tokenizer, factor or model.factor
    model.text_encoder = text_encoder or model.text_encoder
    model.to(device).train()
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    no_sync = net.no_sync if world > 1 else None
    sampler = CanvasSampler(grids, args.canvas[0], args.canvas[1], cfg.patch_h, cfg.patch_w,
                            args.orders.split(","), texts, seed=args.seed + rank, wrap=args.wrap)
    panoramas = wrap_sampler(grids, args, cfg, texts, rank) if args.wrap_every else None
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.95))
    validation = load_validation(args.val_tokens, cfg).to(device) if args.val_tokens else None
    best_val = float("inf")
    started = time.time()
    for step in range(1, args.steps + 1):
        panorama_step = panoramas is not None and step % args.wrap_every == 0
        canvas, order, text = panoramas.batch(1) if panorama_step else sampler.batch(args.batch)
        wrapped = args.wrap or panorama_step
        if text is not None and null_text is not None:
            dropped_b = torch.rand(text.shape[0]) < args.drop_text
            text = torch.where(dropped_b[:, None, None], null_text, text)
        optimizer.zero_grad(set_to_none=True)
        loss = chain_loss(net, canvas.to(device), order, cfg.trained_extents, patch_h=cfg.patch_h,
                          patch_w=cfg.patch_w, wrap=wrapped, text=None if text is None else text.to(device),
                          label_smoothing=args.label_smoothing, input_noise=args.input_noise, no_sync=no_sync)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        out_of_time = torch.tensor(float(bool(args.minutes) and time.time() - started > args.minutes * 60),
                                   device=device)
        if world > 1:
            dist.broadcast(out_of_time, 0)   # every rank stops at the same step
        last = step == args.steps or bool(out_of_time)
        if rank == 0 and (step == 1 or step % 10 == 0 or last):
            print(json.dumps({"step": step, "loss": round(loss, 4), "order": order, "wrap": wrapped,
                              "min": round((time.time() - started) / 60, 2)}), flush=True)
        if rank == 0 and (step % args.save_every == 0 or last):
            if validation is None:
                save_infinity(model.eval(), args.out, extra={"steps": str(step)})
            else:
                val_nll = heldout_nll(model, validation, cfg.trained_extents, batch=args.batch)
                print(json.dumps({"step": step, "val_nll": round(val_nll, 4), "best": round(min(best_val, val_nll), 4)}),
                      flush=True)
                if val_nll < best_val:
                    best_val = val_nll
                    save_infinity(model.eval(), args.out, extra={"steps": str(step), "val_nll": f"{val_nll:.4f}"})
            model.train()
        if last:
            break
    if world > 1:
        dist.destroy_process_group()
    if validation is not None and rank == 0:
        return load_infinity(args.out).to(device).eval()
    return model.eval()


if __name__ == "__main__":
    main()
