"""Test-only: the EfficientNet-lite0 stand-in image encoder as a CLIP_VISION (glue; imports comfy_api).

No CLIP vision weights can be fetched in CI, and the demo predictor was trained on this stand-in's
embeddings, so server workflow tests swap the CLIP Vision loader for this node. It needs the
development requirements (requirements-dev.txt); ``motion_nodes.py`` lists it only when
``BOUNDLESS_TEST_NODES=1``.
"""
from __future__ import annotations

from comfy_api.latest import io

from .motion_encoder import StandInImageEncoder

_ENCODER: list[StandInImageEncoder] = []     # built once per process (loading takes ~2 s)


class StandInVisionLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="BoundlessStandInVisionLoader", display_name="Stand-in Image Encoder (tests)",
            category="Boundless/testing",
            description="Test-only: EfficientNet-lite0 ImageNet features (1280-d) in place of a CLIP vision model.",
            inputs=[], outputs=[io.ClipVision.Output(
                display_name="clip_vision",
                tooltip="Test-only stand-in image encoder: connect it to clip_vision of Semantic Motion Predict.")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        if not _ENCODER:
            _ENCODER.append(StandInImageEncoder.pretrained())
        return io.NodeOutput(_ENCODER[0])
