"""Train a small taming-layout VQGAN on a folder of images (pure torch, CPU friendly).

The result loads with ``loader.load_vqgan`` like any released taming checkpoint. Training differs
from taming's (no GAN loss, and no VGG: its weights are not on any registry) but the inference
model is the same architecture and key layout:

* reconstruction loss: L1 + MSE on random crops (random scale, horizontal flips, optionally colour
  jitter: ``--colour-jitter``), optionally plus a perceptual loss on offline EfficientNet-lite0
  features (``--perceptual``, ``perceptual.py``);
* codebook: exponential-moving-average updates with dead-code restarts from the batch latents,
  which keeps every code in use (a plain learned codebook collapses to a handful of codes);
* commitment loss beta * ||z - sg(e)||^2 with straight-through gradients.

``--device cuda`` trains on a GPU (the network in bf16 autocast, the codebook search in fp32); the
step itself never waits for the host: statistics stay on the device until they are printed.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from safetensors.torch import save_file

from .local_encoder import consistency_loss
from .vqgan import VQGAN, VQGANConfig

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def load_images(paths: list[pathlib.Path], max_side: int) -> list[torch.Tensor]:
    """Images as [3,H,W] float tensors in [-1,1], downscaled so the longer side is <= max_side."""
    images = []
    for path in paths:
        img = Image.open(path).convert("RGB")
        scale = min(1.0, max_side / max(img.size))
        if scale < 1.0:
            img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
        array = np.asarray(img, dtype=np.float32) / 127.5 - 1.0
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
    return images


class CropSampler:
    """Random crops at random scales (1x to 1/max_down) with horizontal flips; with ``colour_jitter``
    that share of the crops also gets a random hue rotation and saturation change, so the codebook
    learns colours the pictures lack (a green the training set never shows must not come back brown)."""

    def __init__(self, images: list[torch.Tensor], crop: int, max_down: float, seed: int,
                 colour_jitter: float = 0.0):
        self.images, self.crop, self.max_down, self.colour_jitter = images, crop, max_down, colour_jitter
        self.rng = random.Random(seed)

    def one(self) -> torch.Tensor:
        img = self.rng.choice(self.images)
        _, h, w = img.shape
        down = self.rng.uniform(1.0, self.max_down)
        side = min(h, w, int(self.crop * down))
        y, x = self.rng.randrange(h - side + 1), self.rng.randrange(w - side + 1)
        patch = img[:, y:y + side, x:x + side].unsqueeze(0)
        if side != self.crop:
            patch = F.interpolate(patch, size=(self.crop, self.crop), mode="area")
        if self.rng.random() < 0.5:
            patch = patch.flip(-1)
        if self.rng.random() < self.colour_jitter:
            patch = jitter_colour(patch, self.rng.uniform(-0.5, 0.5), self.rng.uniform(0.5, 1.5))
        return patch[0]

    def batch(self, n: int) -> torch.Tensor:
        return torch.stack([self.one() for _ in range(n)])


def jitter_colour(x_bchw: torch.Tensor, hue: float, saturation: float) -> torch.Tensor:
    """Rotate the hue by ``hue`` turns and scale the saturation by ``saturation`` ([-1, 1] in and out)."""
    x01 = (x_bchw + 1.0) / 2.0
    x01 = TF.adjust_saturation(TF.adjust_hue(x01.clamp(0.0, 1.0), hue), saturation)
    return x01 * 2.0 - 1.0


class EMACodebook:
    """EMA k-means updates of the model's codebook, restarting codes unused for a while."""

    def __init__(self, model: VQGAN, decay: float = 0.99, restart_after: int = 50):
        weight = model.quantize.embedding.weight
        self.weight, self.decay, self.restart_after = weight, decay, restart_after
        self.cluster_size = torch.ones(weight.shape[0], device=weight.device)
        self.embed_sum = weight.detach().clone()
        self.idle_steps = torch.zeros(weight.shape[0], dtype=torch.long, device=weight.device)

    @torch.no_grad()
    def update(self, z_nc: torch.Tensor, idx_n: torch.Tensor) -> None:
        k = self.weight.shape[0]
        onehot_nk = F.one_hot(idx_n, k).type_as(z_nc)
        counts_k = onehot_nk.sum(0)
        self.cluster_size.mul_(self.decay).add_(counts_k, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(onehot_nk.t() @ z_nc, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + 1e-5) / (n + k * 1e-5) * n
        self.weight.copy_(self.embed_sum / smoothed.unsqueeze(1))
        self.idle_steps = torch.where(counts_k > 0, torch.zeros_like(self.idle_steps), self.idle_steps + 1)
        # restart idle codes at random batch latents, as a masked update (no host sync on a GPU)
        dead_k1 = (self.idle_steps >= self.restart_after).unsqueeze(1)
        picks_kc = z_nc[torch.randint(len(z_nc), (k,), device=z_nc.device)]
        self.weight.copy_(torch.where(dead_k1, picks_kc, self.weight))
        self.embed_sum.copy_(torch.where(dead_k1, picks_kc, self.embed_sum))
        self.cluster_size.copy_(torch.where(dead_k1[:, 0], torch.ones_like(self.cluster_size), self.cluster_size))
        self.idle_steps.masked_fill_(dead_k1[:, 0], 0)


def train_step(model: VQGAN, codebook: EMACodebook, opt: torch.optim.Optimizer, x_bchw: torch.Tensor,
               beta: float = 0.25, perceptual=None, perceptual_weight: float = 0.0,
               consistency_weight: float = 0.0, rng: random.Random | None = None) -> dict[str, torch.Tensor]:
    """One step; returns detached 0-d tensors (read them only when printing: on a GPU that syncs).
    With ``consistency_weight``, a sub-crop encoded alone is pulled to the crop's codes
    (``local_encoder.consistency_loss``), so codes do not depend on what lies around them."""
    autocast = torch.autocast(x_bchw.device.type, dtype=torch.bfloat16, enabled=x_bchw.device.type == "cuda")
    with autocast:
        z_bchw = model.quant_conv(model.encoder(x_bchw)).float()
    idx_bhw = model.quantize.indices(z_bchw.detach())      # the nearest-code search stays in fp32
    e_bchw = model.quantize.lookup(idx_bhw).detach()
    z_q = z_bchw + (e_bchw - z_bchw).detach()            # straight-through estimator
    with autocast:
        recon = model.decode(z_q).float()
    rec_loss = (recon - x_bchw).abs().mean() + F.mse_loss(recon, x_bchw)
    commit = F.mse_loss(z_bchw, e_bchw)
    loss = rec_loss + beta * commit
    stats = {}
    if perceptual is not None and perceptual_weight > 0:
        with autocast:
            seen = perceptual(recon, x_bchw).float()
        loss = loss + perceptual_weight * seen
        stats["perceptual"] = seen.detach()
    if consistency_weight > 0:
        with autocast:
            consistent = consistency_loss(model, x_bchw, idx_bhw, rng or random.Random())
        loss = loss + consistency_weight * consistent
        stats["consistency"] = consistent.detach()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    codebook.update(z_bchw.detach().permute(0, 2, 3, 1).reshape(-1, z_bchw.shape[1]), idx_bhw.flatten())
    used = (torch.bincount(idx_bhw.flatten(), minlength=codebook.weight.shape[0]) > 0).sum()
    return {"loss": loss.detach(), "rec": rec_loss.detach(), "commit": commit.detach(), **stats, "codes_used": used}


@torch.no_grad()
def latent_picks(model: VQGAN, sampler: CropSampler, batch: int, count: int, rounds: int = 1) -> torch.Tensor:
    """``count`` pre-quantization latents ``[count, E]`` of random crops (``rounds`` batches), slightly
    jittered: starting codes that sit where real latents are."""
    z = torch.cat([model.quant_conv(model.encoder(sampler.batch(batch))) for _ in range(rounds)])
    z_nc = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    return z_nc[torch.randint(len(z_nc), (count,))] + 0.01 * torch.randn(count, z_nc.shape[1])


@torch.no_grad()
def init_codebook_from_data(model: VQGAN, sampler: CropSampler, batch: int) -> None:
    """Seed the codebook with encoder outputs so training starts with every code near real latents."""
    weight = model.quantize.embedding.weight
    weight.copy_(latent_picks(model, sampler, batch, weight.shape[0], rounds=4))


@torch.no_grad()
def grow_codebook(model: VQGAN, sampler: CropSampler, batch: int, n_embed: int) -> None:
    """Extend a trained codebook to ``n_embed`` codes; the new ones start at encoder outputs of real
    crops (the old codes and every other weight are kept, so a fine-tune starts from the old model)."""
    old = model.quantize.embedding.weight
    if n_embed < old.shape[0]:
        raise ValueError(f"--n-embed {n_embed} is smaller than the resumed codebook ({old.shape[0]} codes)")
    if n_embed == old.shape[0]:
        return
    grown = torch.nn.Embedding(n_embed, old.shape[1])
    grown.weight.copy_(torch.cat([old, latent_picks(model, sampler, batch, n_embed - old.shape[0])]))
    model.quantize.embedding = grown


def save_vqgan(model: VQGAN, path: pathlib.Path, metadata: dict) -> None:
    """Save in the taming key layout; fp16 halves the shipped size (the loader casts back)."""
    state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path), metadata={k: v if isinstance(v, str) else json.dumps(v, default=str)
                                          for k, v in metadata.items()})


def load_metadata(path: pathlib.Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def main(argv=None):
    p = argparse.ArgumentParser(description="Train a small taming-layout VQGAN on images.")
    p.add_argument("images", nargs="+", type=pathlib.Path, help="image files or folders")
    p.add_argument("--out", type=pathlib.Path, required=True)
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--ch-mult", default="1,1,2,2,2")
    p.add_argument("--z-channels", type=int, default=64)
    p.add_argument("--embed-dim", type=int, default=8)
    p.add_argument("--n-embed", type=int, default=0,
                   help="codebook size (default 512; with --resume: grow the resumed codebook to this many codes)")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--max-side", type=int, default=2048, help="downscale images so the long side fits")
    p.add_argument("--max-down", type=float, default=4.0, help="random crop scale range 1..max_down")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=100000)
    p.add_argument("--minutes", type=float, default=20.0, help="stop after this much wall time")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", type=pathlib.Path, help="continue from this checkpoint (its architecture wins)")
    p.add_argument("--perceptual", type=float, default=0.0,
                   help="weight of the EfficientNet-lite0 perceptual loss (0 = pixel losses only)")
    p.add_argument("--save-every", type=int, default=100, help="also save every this many steps")
    p.add_argument("--colour-jitter", type=float, default=0.0,
                   help="share of the crops given a random hue rotation and saturation change (e.g. 0.3)")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    p.add_argument("--consistency", type=float, default=0.0,
                   help="weight of the local-code loss: a sub-crop encoded alone must pick the crop's codes")
    args = p.parse_args(argv)
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    files = sorted(f for src in args.images for f in ([src] if src.is_file() else src.rglob("*"))
                   if f.suffix.lower() in IMAGE_SUFFIXES)
    sampler = CropSampler(load_images(files, args.max_side), args.crop, args.max_down, args.seed, args.colour_jitter)
    levels = tuple(int(m) for m in args.ch_mult.split(","))
    cfg = VQGANConfig(ch=args.ch, ch_mult=levels, num_res_blocks=1, attn_levels=(len(levels) - 1,),
                      z_channels=args.z_channels, embed_dim=args.embed_dim, n_embed=args.n_embed or 512)
    if args.resume:
        from .loader import load_vqgan
        model = load_vqgan(str(args.resume)).float().train().requires_grad_(True)
        if args.n_embed:
            grow_codebook(model, sampler, args.batch, args.n_embed)
    else:
        model = VQGAN(cfg).train()
        init_codebook_from_data(model, sampler, args.batch)
    model.to(device)
    codebook = EMACodebook(model)
    perceptual = None
    if args.perceptual > 0:
        from .perceptual import PerceptualLoss
        perceptual = PerceptualLoss().to(device)
    params = [p for n, p in model.named_parameters() if not n.startswith("quantize.")]
    opt = torch.optim.Adam(params, lr=args.lr, betas=(0.5, 0.9))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 200))
    previous = int(load_metadata(args.resume).get("steps", 0)) if args.resume else 0
    metadata = {"format": "taming.vqgan", "files": [f.name for f in files],
                "config": vars(args)}
    start = time.time()
    step = 0
    while step < args.steps and time.time() - start < args.minutes * 60:
        stats = train_step(model, codebook, opt, sampler.batch(args.batch).to(device, non_blocking=True),
                           perceptual=perceptual, perceptual_weight=args.perceptual,
                           consistency_weight=args.consistency, rng=sampler.rng)
        sched.step()
        step += 1
        if step % 50 == 0 or step == 1:
            print(json.dumps({"step": step, "min": round((time.time() - start) / 60, 2),
                              **{k: round(v.item(), 5) for k, v in stats.items()}}), flush=True)
        if step % args.save_every == 0:
            save_vqgan(model, args.out, {**metadata, "steps": previous + step})
    save_vqgan(model.eval(), args.out, {**metadata, "steps": previous + step})
    print(f"saved {args.out} after {step} steps")


if __name__ == "__main__":
    main()
