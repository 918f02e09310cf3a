"""The demo world: deterministic, seamless 360° panoramas, captions that say what is shown, real motion."""
from __future__ import annotations

import numpy as np

from packpath import pack_module

scene_mod = pack_module("nodes.world.scene")
render = pack_module("nodes.world.render")


def test_a_seed_gives_one_picture_and_other_seeds_other_pictures():
    first = render.panorama(scene_mod.sample_scene(11), 256, 64)
    assert first.shape == (64, 256, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render.panorama(scene_mod.sample_scene(11), 256, 64))
    assert not np.array_equal(first, render.panorama(scene_mod.sample_scene(12), 256, 64))


def test_panoramas_wrap_around_without_a_seam():
    """Column W-1 continues into column 0 like any two neighbouring columns do."""
    seams, typical = [], []
    for seed in range(8):
        picture = render.panorama(scene_mod.sample_scene(seed), 512, 128).astype(np.float64)
        seams.append(np.abs(picture[:, -1] - picture[:, 0]).mean())
        typical.append(np.abs(np.diff(picture, axis=1)).mean())
    assert np.mean(seams) <= 1.5 * np.mean(typical), (seams, typical)
    # the same picture rolled by half its width is just as seamless at its new middle
    picture = render.panorama(scene_mod.sample_scene(3), 512, 128).astype(np.float64)
    rolled = np.roll(picture, 256, axis=1)
    assert np.abs(rolled[:, 255] - rolled[:, 256]).mean() <= 3 * np.abs(np.diff(picture, axis=1)).mean()


def test_fixed_attributes_are_kept_and_the_rest_varies():
    scenes = [scene_mod.sample_scene(seed, time="sunset", snow=True) for seed in range(20)]
    assert all(s.time == "sunset" and s.snow for s in scenes)
    assert len({s.water for s in scenes}) > 1 and len({s.forest for s in scenes}) == 2
    by_the_sea = [scene_mod.sample_scene(seed, water="sea", forest=True) for seed in range(20)]
    assert all(s.water == "sea" and s.forest for s in by_the_sea)      # a fixed forest stays, even by the sea


WORDS = {"snow": ("snow", "white-topped"), "lake": ("lake",), "sea": ("sea", "ocean"),
         "forest": ("forest", "conifers", "woods", "fir")}


def test_every_caption_names_the_controllable_attributes():
    for seed in range(120):
        scene = scene_mod.sample_scene(seed)
        text = scene_mod.caption(scene).lower()
        assert any(w.lower() in text for w in scene_mod._TIME_WORDS[scene.time]), (scene, text)
        assert any(w in text for w in WORDS["snow"]) == scene.snow, (scene, text)
        assert any(w in text for w in WORDS["lake"]) == (scene.water == "lake"), (scene, text)
        assert any(w in text for w in WORDS["sea"]) == (scene.water == "sea"), (scene, text)
        assert any(w in text for w in WORDS["forest"]) == scene.forest, (scene, text)
        assert text[0].isalpha() and "  " not in text


def test_one_scene_is_described_in_many_ways():
    scene = scene_mod.sample_scene(5, water="lake", forest=True, snow=True)
    captions = {scene_mod.caption(scene, variant) for variant in range(8)}
    assert len(captions) >= 6


def _sky_mean(time: str) -> np.ndarray:
    pictures = [render.panorama(scene_mod.sample_scene(seed, time=time, clouds=0.0, moon=False), 256, 64)
                for seed in range(3)]
    return np.mean([p[:20].reshape(-1, 3).mean(0) for p in pictures], axis=0)


def test_the_time_of_day_shows_in_the_sky():
    day, golden, sunset, dusk, night = (_sky_mean(t) for t in scene_mod.TIMES)
    brightness = [c.mean() for c in (day, golden, sunset, dusk, night)]
    assert brightness[0] > brightness[3] > brightness[4] and brightness[2] > brightness[4]
    assert sunset[0] > sunset[2] * 0.9 and day[2] > day[0] * 1.5          # red evening sky, blue day sky
    assert night.max() < 40


def test_video_layers_move_with_parallax_and_the_clouds_drift():
    pan = 5
    still_sky = scene_mod.sample_scene(1, forest=True, water="none", clouds=0.0, fog=0.0, time="day")
    frames = render.video(still_sky, 128, 64, 3, pan_px_per_frame=pan).astype(np.int16)
    painted = render.paint_layers(still_sky, 4 * 128, 64)
    forest_rgba = painted.layers[-1][0]
    solid_rows = [y for y in range(painted.horizon_px) if forest_rgba[y, :, 3].min() == 1.0]
    assert solid_rows, "no row fully covered by the forest"
    row = solid_rows[0]
    # the forest (parallax 1) moves by the whole pan: frame 1 is frame 0 shifted left by `pan` columns
    assert np.array_equal(frames[1, row, :-pan], frames[0, row, pan:])
    assert not np.array_equal(frames[1, row], frames[0, row])
    # the sky is at infinity: it does not move in these few frames
    assert np.array_equal(frames[1, 0], frames[0, 0])
    cloudy = scene_mod.sample_scene(1, forest=True, water="none", clouds=0.85, fog=0.0, time="day")
    frames = render.video(cloudy, 128, 64, 3, pan_px_per_frame=0.0, cloud_px_per_frame=3.0,
                          panorama_width=128).astype(np.int16)
    top = slice(0, painted.horizon_px)
    assert np.abs(frames[2, top] - frames[0, top]).mean() > 0.5          # the clouds drift on their own
    assert np.array_equal(frames[2, solid_rows[0]], frames[0, solid_rows[0]])   # no pan: the land stands


def test_video_training_clips_pan_one_token_a_frame_and_say_when_the_sun_sinks():
    """The text-to-video model's clips: the camera pans right by one 16-px token per frame, so the
    nearest layer (the ground) moves exactly one token column left; sinking-sun clips say so."""
    from train_infinity_world_video import FRAMES, PAN_PX, world_clip
    seed = next(s for s in range(100) if scene_mod.sample_scene(s).water == "none" and scene_mod.sample_scene(s).forest)
    frames, caption = world_clip(seed)
    assert frames.shape == (FRAMES, 256, 384, 3) and frames.dtype == np.uint8 and PAN_PX == 16
    assert caption == world_clip(seed)[1] and caption.startswith(caption[0].upper())
    forest_rgba = render.paint_layers(scene_mod.sample_scene(seed), 4 * 384, 256).layers[-1][0]
    row = next(y for y in range(256) if forest_rgba[y, :, 3].min() == 1.0)      # fully covered by the forest
    for t in range(FRAMES - 1):                                                  # parallax 1: one token a frame
        assert np.array_equal(frames[t + 1, row, :-PAN_PX], frames[t, row, PAN_PX:])
    sinking = [seed for seed in range(60) if world_clip(seed, 64, 64, 2)[1].endswith("the sun going down")]
    assert sinking and all(scene_mod.sample_scene(s).time in ("golden hour", "sunset") for s in sinking)
