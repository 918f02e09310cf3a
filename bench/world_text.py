#!/usr/bin/env python3
"""Does a world text model draw what its prompt asks for? Attributes read back from the pictures.

``.venv/bin/python bench/world_text.py --model models/infinity/boundless_world_text.safetensors``

A prompt of the demo world names controllable attributes (``nodes/world/scene.py``): time of day
(day, golden hour, sunset, dusk, night), snow, water (none, lake, sea) and forest. To read them
back from a picture, one logistic-regression classifier per attribute is fitted on EfficientNet-lite0
features (the mean over 256-px crops) and the colours of 8 horizontal bands of ``--classifier-scenes``
world renders of held-out seeds, *round-tripped through the model's tokenizer* (so the classifiers
see what a perfect generator would produce); their accuracy on ``--check-scenes`` other held-out
round-trips is the ceiling printed beside the results (``--ceiling-only`` prints just that). The
round-trips' features are cached per tokenizer and seed range (``--cache``).

Then for ``--prompts`` held-out scenes, 4×2-patch canvases (1024×512) are generated from

* the scene's training-style caption (``scene.caption``: the training wordings, other seeds), and
* a paraphrase in words no training caption uses (``paraphrase`` below),

and each attribute the classifier reads from the canvas is compared with the scene's. Chance is
printed beside it (the share of the most common value among the prompts). ``--guidance 1,3``
repeats the canvases (same seeds) at each text-guidance scale (1 = off). Prints JSON.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pathlib
import sys

import numpy as np
import torch
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "bench"))
import metrics  # noqa: E402
from packpath import pack_module  # noqa: E402
from tokenizer import round_trip  # noqa: E402

checkpoint = pack_module("nodes.infinity.checkpoint")
config_mod = pack_module("nodes.infinity.config")
sampler = pack_module("nodes.infinity.sampler")
minilm = pack_module("nodes.text.minilm")
vq_loader = pack_module("nodes.vq.loader")
scene_mod = pack_module("nodes.world.scene")
render = pack_module("nodes.world.render")

CLASSIFIER_SEED, PROMPT_SEED = 300_000, 400_000        # held out of every training and benchmark set
ATTRIBUTES = ("time", "snow", "water", "forest")
READER_VERSION = "r1"            # bump when Reader.feature changes: names the cached features

# Words that no training caption uses (scene._*_WORDS): only the text encoder relates them.
_PARAPHRASE_TIME = {"day": "in the middle of a sunny afternoon", "golden hour": "late in the afternoon, warm low sun",
                    "sunset": "while the sun goes down in orange and red", "dusk": "in the fading light after sundown",
                    "night": "in the dark of the night with stars"}
_PARAPHRASE_WATER = {"none": "", "lake": " and a quiet pond below", "sea": " and the open ocean below"}


def paraphrase(scene) -> str:
    """The scene's controllable attributes in words of no training caption."""
    peaks = "glaciated summits" if scene.snow else "rocky summits without snow"
    trees = " with a dense evergreen woodland" if scene.forest else ""
    return f"{peaks}{trees}{_PARAPHRASE_WATER[scene.water]} {_PARAPHRASE_TIME[scene.time]}".strip()


def attributes(scene) -> dict[str, str]:
    return {"time": scene.time, "snow": str(scene.snow), "water": scene.water, "forest": str(scene.forest)}


def band_colours(image_hw3: torch.Tensor, bands: int = 8) -> np.ndarray:
    """Per horizontal band (sky at the top, water and forest at the bottom): mean and spread of each
    channel and the share of near-white pixels (snow). The world puts its attributes in bands, which
    pooled EfficientNet features average away."""
    rows = torch.tensor_split(image_hw3.float(), bands, dim=0)
    stats = [torch.cat([b.mean((0, 1)), b.std((0, 1)), (b.min(-1).values > 0.8).float().mean()[None]]) for b in rows]
    return torch.cat(stats).numpy()


class Reader:
    """EfficientNet-lite0 picture features and band colours → one classifier per attribute."""

    def __init__(self):
        self.features = metrics.Features()
        self.classifiers = {}

    def feature(self, image_hw3: torch.Tensor) -> np.ndarray:
        return np.concatenate([self.features(metrics.crops(image_hw3, 256, 128)).mean(0), band_colours(image_hw3)])

    def fit(self, feats: np.ndarray, labels: list[dict]) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        for name in ATTRIBUTES:
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
            self.classifiers[name] = model.fit(feats, [row[name] for row in labels])

    def read(self, feats: np.ndarray) -> list[dict]:
        predicted = {name: model.predict(feats) for name, model in self.classifiers.items()}
        return [{name: str(predicted[name][i]) for name in ATTRIBUTES} for i in range(len(feats))]


def world_round_trips(vqgan, seeds: range) -> tuple[list[torch.Tensor], list[dict]]:
    images, labels = [], []
    for seed in seeds:
        scene = scene_mod.sample_scene(seed)
        picture = torch.from_numpy(render.panorama(scene, 1024, 512).astype(np.float32) / 255.0)
        images.append(round_trip(vqgan, picture))
        labels.append(attributes(scene))
    return images, labels


def tokenizer_key(vqgan) -> str:
    """A hash of every weight of the tokenizer (encoder, codebook and decoder all shape a round-trip)."""
    digest = hashlib.sha1()
    for name, tensor in sorted(vqgan.state_dict().items()):
        digest.update(name.encode() + tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


def round_trip_features(reader: Reader, vqgan, seeds: range, cache: pathlib.Path | None,
                        key: str = "") -> tuple[np.ndarray, list[dict]]:
    """Reader features of the round-trips of the world scenes of ``seeds``, and their attributes.

    Cached under ``cache`` (None: not cached) per tokenizer (``key``, its ``tokenizer_key``) and seed
    range: the features of 300 scenes take about half an hour on two CPU threads, and every model of
    one tokenizer is read by the same classifiers."""
    labels = [attributes(scene_mod.sample_scene(seed)) for seed in seeds]
    path = None if cache is None else cache / f"world_text_reader_{READER_VERSION}_{key}_{seeds.start}_{seeds.stop}.npy"
    if path is not None and path.is_file():
        return np.load(path), labels
    images, _ = world_round_trips(vqgan, seeds)
    feats = np.stack([reader.feature(image) for image in images])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path.with_suffix(".tmp.npy"), feats)
        path.with_suffix(".tmp.npy").replace(path)
    return feats, labels


def agreement(read: list[dict], truth: list[dict]) -> dict[str, float]:
    out = {name: round(float(np.mean([r[name] == t[name] for r, t in zip(read, truth)])), 3) for name in ATTRIBUTES}
    out["all_attributes"] = round(float(np.mean([out[name] for name in ATTRIBUTES])), 3)
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="text-conditioned NUWA-Infinity model of the demo world")
    p.add_argument("--vqgan", default=str(ROOT / "models" / "vqgan" / "boundless_world_f16_m256.safetensors"),
                   help="the tokenizer the model was trained on (the 256-code world tokenizer of the shipped models)")
    p.add_argument("--classifier-scenes", type=int, default=300,
                   help="held-out renders the classifiers fit on (100 / 200 / 300 reach a 0.83 / 0.89 / 0.91 ceiling)")
    p.add_argument("--check-scenes", type=int, default=80, help="other held-out renders that measure the ceiling")
    p.add_argument("--ceiling-only", action="store_true", help="only the classifiers' ceiling (no --model needed)")
    p.add_argument("--cache", default=str(ROOT / "output" / "cache"),
                   help="folder for the round-trips' reader features ('' = no cache)")
    p.add_argument("--prompts", type=int, default=24, help="held-out scenes prompted (each: caption + paraphrase)")
    p.add_argument("--guidance", default="1", help="comma list of text-guidance scales (1 = off)")
    p.add_argument("--neighbour-guidance", type=float, default=1.0, help="neighbour guidance of every canvas (1 = off)")
    p.add_argument("--edge-temperature", type=float, default=1.0,
                   help="× the temperature at tokens along a finished neighbour, every canvas (1 = off)")
    p.add_argument("--save-examples", type=pathlib.Path, help="write the first 4 canvases of each setting here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if not args.model and not args.ceiling_only:
        p.error("give --model (or --ceiling-only)")
    torch.set_num_threads(args.threads)
    vqgan = vq_loader.load_vqgan(args.vqgan).float().eval()
    reader = Reader()
    cache = pathlib.Path(args.cache) if args.cache else None
    key = tokenizer_key(vqgan) if cache is not None else ""
    fit_end = CLASSIFIER_SEED + args.classifier_scenes
    reader.fit(*round_trip_features(reader, vqgan, range(CLASSIFIER_SEED, fit_end), cache, key))
    check_feats, check_labels = round_trip_features(reader, vqgan, range(fit_end, fit_end + args.check_scenes),
                                                    cache, key)
    ceiling = agreement(reader.read(check_feats), check_labels)
    print(json.dumps({"classifier_on_held_out_round_trips": ceiling}), flush=True)
    if args.ceiling_only:
        return {"classifier_scenes": args.classifier_scenes, "check_scenes": args.check_scenes,
                "classifier_on_held_out_round_trips": ceiling}
    model = checkpoint.load_infinity(args.model).eval()
    encoder = minilm.load_text_encoder(minilm.default_path())

    scenes = [scene_mod.sample_scene(seed) for seed in range(PROMPT_SEED, PROMPT_SEED + args.prompts)]
    truth = [attributes(scene) for scene in scenes]
    result = {"config": {"classifier_scenes": args.classifier_scenes, "check_scenes": args.check_scenes,
                         "prompts": args.prompts,
                         "neighbour_guidance": args.neighbour_guidance, "edge_temperature": args.edge_temperature},
              "classifier_on_held_out_round_trips": ceiling,
              "chance": {name: round(max(np.mean([t[name] == v for t in truth]) for v in {t[name] for t in truth}), 3)
                         for name in ATTRIBUTES},
              "examples": [{"caption": scene_mod.caption(s), "paraphrase": paraphrase(s)} for s in scenes[:3]]}
    empty = encoder.encode([""]).states
    prompt_states = {kind: [encoder.encode([words]).states for words in prompts] for kind, prompts in
                     (("training_style", [scene_mod.caption(s) for s in scenes]),
                      ("paraphrase", [paraphrase(s) for s in scenes]))}
    for guidance in [float(g) for g in args.guidance.split(",")]:
        for kind, states in prompt_states.items():
            feats = []
            for i, text in enumerate(states):
                state = sampler.generate_canvas(model, 4, 2, order="right", extents=config_mod.Extents(1, 1, 0),
                                                text=text, seed=i, temperature=1.0, top_k=64, guidance=guidance,
                                                empty_text=empty, neighbour_guidance=args.neighbour_guidance,
                                                edge_temperature=args.edge_temperature)
                with torch.no_grad():
                    image = ((vqgan.decode_indices(state.tokens[0, 0][None]).clamp(-1, 1) + 1) / 2)[0].permute(1, 2, 0)
                feats.append(reader.feature(image))
                if args.save_examples and i < 4:
                    args.save_examples.mkdir(parents=True, exist_ok=True)
                    Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(
                        args.save_examples / f"g{guidance:g}_{kind}_{i}.png")
            key = kind if guidance == 1.0 else f"{kind}_guidance_{guidance:g}"
            result[key] = agreement(reader.read(np.stack(feats)), truth)
            print(json.dumps({key: result[key]}), flush=True)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
