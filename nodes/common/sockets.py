"""Custom ComfyUI socket types of the pack (glue: imports comfy_api).

The string names are what workflow JSON stores; never rename them.
"""
from comfy_api.latest import io

Tokens = io.Custom("BOUNDLESS_TOKENS")          # common.tokens.Tokens
VQGANModel = io.Custom("BOUNDLESS_VQGAN")        # ModelPatcher around vq.vqgan.VQGAN
PixelGuide = io.Custom("BOUNDLESS_PIXEL_GUIDE")  # ModelPatcher around vq.guided.PixelGuide
TextEncoderModel = io.Custom("BOUNDLESS_TEXT_ENCODER")  # ModelPatcher around text.minilm.TextEncoder
Text = io.Custom("BOUNDLESS_TEXT")                      # text.prompts.PromptMap (base + regional prompts)
