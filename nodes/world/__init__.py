"""The demo world: procedural landscapes with captions, as panoramas and panning videos (numpy)."""
