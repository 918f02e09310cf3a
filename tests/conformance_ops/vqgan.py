"""Conformance ops for the taming VQGAN (shared/fixtures/vqgan/OPS.md)."""
from packpath import pack_module

from . import Kind

loader = pack_module("nodes.vq.loader")


def check_shapes(shapes):
    built = {k: list(v.shape) for k, v in loader.build_meta(shapes).state_dict().items()}
    want = {k: list(v) for k, v in shapes.items()}
    if built == want:
        return None
    missing = sorted(set(want) - set(built))
    extra = sorted(set(built) - set(want))
    wrong = sorted(k for k in set(want) & set(built) if want[k] != built[k])
    return f"missing {missing[:3]} extra {extra[:3]} wrong {wrong[:3]}"


KINDS = {loader.KIND: Kind(load=loader.load_vqgan, check_shapes=check_shapes, detect=loader.looks_like_vqgan)}


def encode(models, inputs, params):
    z_q, indices, z = models[0].encode(inputs["image"])
    return {"indices": indices, "z_q": z_q, "z": z}


OPS = {
    "vqgan.encode": encode,
    "vqgan.load_checkpoint": encode,
    "vqgan.decode_indices": lambda models, inputs, params: {"image": models[0].decode_indices(inputs["indices"])},
    "vqgan.reconstruct": lambda models, inputs, params: {"image": models[0](inputs["image"])},
}
