"""What a landscape of the demo world holds, drawn from a seed, and how to say it in words.

A ``Scene`` is a handful of attributes a prompt can control (time of day, snow, water, forest,
fog, clouds, moon) plus the free parameters that make each picture different (ridge shapes,
colours, positions). ``caption`` describes the controllable attributes with varied wording and
word order, so a text-conditioned model has to learn what the words mean rather than memorise a
few sentences; a held-out set is simply other seeds (and, for paraphrases, the held-out wording).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

TIMES = ("day", "golden hour", "sunset", "dusk", "night")
WATERS = ("none", "lake", "sea")


@dataclasses.dataclass(frozen=True)
class Scene:
    seed: int
    time: str                 # one of TIMES
    snow: bool                # snow on the highest range
    water: str                # one of WATERS: a still lake or a sea below the horizon
    forest: bool              # a band of conifers in front of the mountains
    fog: float                # 0 (clear) .. 1 (thick fog in the valleys)
    clouds: float             # 0 (clear sky) .. 1 (overcast)
    ranges: int               # mountain ranges, far to near (2..4)
    moon: bool                # a moon in the night or dusk sky
    sun_azimuth: float        # where the sun (or moon) stands, as a share of the panorama's width
    horizon: float            # the horizon's height as a share of the picture (from the top)
    hue_shift: float          # -1..1: cooler or warmer palette of the same time of day


def sample_scene(seed: int, **fixed) -> Scene:
    """A scene drawn from ``seed``; any attribute given in ``fixed`` is kept as given."""
    rng = np.random.default_rng([seed, 1])
    time = str(rng.choice(TIMES, p=[0.34, 0.18, 0.18, 0.12, 0.18]))
    values = dict(
        seed=seed, time=time, snow=bool(rng.random() < 0.45), water=str(rng.choice(WATERS, p=[0.4, 0.4, 0.2])),
        forest=bool(rng.random() < 0.55), fog=float(rng.choice([0.0, 0.0, rng.uniform(0.3, 0.9)])),
        clouds=float(rng.choice([0.0, rng.uniform(0.15, 0.5), rng.uniform(0.5, 0.85)])),
        ranges=int(rng.integers(2, 5)), moon=bool(time in ("night", "dusk") and rng.random() < 0.7),
        sun_azimuth=float(rng.random()), horizon=float(rng.uniform(0.55, 0.68)),
        hue_shift=float(rng.uniform(-1, 1)))
    values.update(fixed)
    if values["water"] == "sea" and "forest" not in fixed:     # fewer forests by the sea, unless asked for
        values["forest"] = values["forest"] and rng.random() < 0.5
    return Scene(**values)


# Several ways to say each attribute; ``caption`` picks among them with its own generator.
_TIME_WORDS = {
    "day": ["on a clear day", "in bright daylight", "at midday", "under a blue sky", "in the daytime"],
    "golden hour": ["at golden hour", "in warm evening light", "in the golden light of late afternoon",
                    "as the sun gets low"],
    "sunset": ["at sunset", "under a red sunset sky", "as the sun sets", "in the glow of sunset"],
    "dusk": ["at dusk", "in the blue hour", "at twilight", "after the sun has gone down"],
    "night": ["at night", "under a starry night sky", "by night", "beneath the stars"],
}
_MOUNTAIN_WORDS = ["mountains", "a mountain range", "peaks", "ridges", "a chain of mountains"]
_SNOW_WORDS = ["snowy", "snow-capped", "snow-covered", "white-topped"]
_FOREST_WORDS = ["a pine forest", "dark conifers", "a forest of fir trees", "woods"]
_WATER_WORDS = {"lake": ["a calm lake", "a still mountain lake", "a lake that mirrors the sky"],
                "sea": ["the sea", "a calm sea", "the ocean"]}
_FOG_WORDS = ["in the fog", "with mist in the valleys", "in a light haze", "with low fog"]
_CLOUD_WORDS = {"few": ["a few clouds", "scattered clouds", "some wispy clouds"],
                "many": ["a cloudy sky", "heavy clouds", "an overcast sky"]}
_MOON_WORDS = ["and the moon", "with a bright moon", "under the moon"]
_TEMPLATES = [
    "{mountains}{water}{forest}{time}{weather}",
    "{time_cap}, {mountains}{water}{forest}{weather}",
    "a landscape of {mountains}{forest}{water}{time}{weather}",
    "{mountains}{weather}{forest}{water}{time}",
    "a panorama of {mountains}{water}{time}{forest}{weather}",
]


def caption(scene: Scene, variant: Optional[int] = None) -> str:
    """A sentence that names every controllable attribute of ``scene``; ``variant`` picks the
    wording (default: drawn from the scene's seed)."""
    rng = np.random.default_rng([scene.seed, 2] if variant is None else [scene.seed, 3, variant])
    mountains = str(rng.choice(_MOUNTAIN_WORDS))
    if scene.snow:
        snow = str(rng.choice(_SNOW_WORDS))
        mountains = f"{snow} {mountains}" if not mountains.startswith("a ") else f"a {snow} {mountains[2:]}"
    water = "" if scene.water == "none" else f" {rng.choice(['above', 'over', 'beside', 'behind'])} " \
        f"{rng.choice(_WATER_WORDS[scene.water])}"
    forest = f" with {rng.choice(_FOREST_WORDS)}" if scene.forest else ""
    choices = [w for w in _TIME_WORDS[scene.time] if not (scene.clouds > 0.5 and "sky" in w)]  # no "blue sky" if overcast
    time_words = str(rng.choice(choices))
    weather = []
    if scene.fog > 0.25:
        weather.append(str(rng.choice(_FOG_WORDS)))
    if scene.clouds > 0.5:
        weather.append("under " + str(rng.choice(_CLOUD_WORDS["many"])))
    elif scene.clouds > 0.12:
        weather.append("with " + str(rng.choice(_CLOUD_WORDS["few"])))
    if scene.moon:
        weather.append(str(rng.choice(_MOON_WORDS)))
    template = str(rng.choice(_TEMPLATES))
    text = template.format(mountains=mountains, water=water, forest=forest, time=" " + time_words,
                           time_cap=time_words[0].upper() + time_words[1:],
                           weather="".join(" " + w for w in weather))
    text = " ".join(text.split())
    return text[0].upper() + text[1:]
