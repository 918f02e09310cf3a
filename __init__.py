"""Boundless: NUWA-Infinity, Paella, VAR and StoryDiffusion as ComfyUI nodes.

Inside ComfyUI this module exposes the V3 entry point ``comfy_entrypoint``. Outside ComfyUI (tests,
scripts, training) importing it does nothing, so the pure-torch modules under ``nodes/`` import
without ComfyUI installed.
"""
import importlib
import logging

# Modules (under nodes/) that define a NODES list of ComfyUI node classes.
NODE_MODULES = ("common.nodes", "vq.nodes", "text.nodes", "infinity.nodes", "paella.nodes", "var.nodes", "story.nodes", "story.motion_nodes")

try:
    import comfy.utils  # noqa: F401  (only present inside ComfyUI)
    from comfy_api.latest import ComfyExtension, io
except ImportError:
    pass
else:
    def _node_classes() -> list[type[io.ComfyNode]]:
        """Every system's ``nodes.NODES``; a system that fails to import is logged, the rest still load."""
        from .nodes.common import comfy_glue, validation
        comfy_glue.register_model_folders()
        classes = []
        for name in NODE_MODULES:
            try:
                module = importlib.import_module(f".nodes.{name}", __name__)
            except Exception:  # noqa: BLE001 - keep the other systems usable
                logging.exception("[Boundless] could not import the %s nodes", name)
                continue
            classes.extend(validation.guard(node) for node in module.NODES)
        return classes

    class BoundlessExtension(ComfyExtension):
        async def get_node_list(self) -> list[type[io.ComfyNode]]:
            return _node_classes()

    async def comfy_entrypoint() -> ComfyExtension:
        return BoundlessExtension()
