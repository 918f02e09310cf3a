"""Model folders when a user's extra_model_paths.yaml already names one of the pack's kinds."""
from __future__ import annotations

import copy

import pytest

from conftest import import_comfy_in_process
from packpath import pack_module


@pytest.fixture()
def folder_paths(monkeypatch, tmp_path):
    import_comfy_in_process()
    import folder_paths as fp
    monkeypatch.setattr(fp, "models_dir", str(tmp_path / "models"))
    monkeypatch.setattr(fp, "folder_names_and_paths", copy.deepcopy(fp.folder_names_and_paths))
    return fp


def put(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"x")


@pytest.mark.parametrize("kind,extensions,listed", [("vqgan", None, ["a.ckpt", "b.safetensors", "mine.pt"]),
                                                    ("paella_embeddings", {".safetensors"}, ["b.safetensors"])])
def test_a_yaml_entry_keeps_models_folder_and_weight_filter(folder_paths, tmp_path, kind, extensions, listed):
    glue = pack_module("nodes.common.comfy_glue")
    put(tmp_path / "models" / kind, "a.ckpt", "b.safetensors", "notes.txt")
    put(tmp_path / "elsewhere", "mine.pt", "readme.txt")
    folder_paths.add_model_folder_path(kind, str(tmp_path / "elsewhere"))    # what the yaml does first
    glue.register_folder(kind, extensions)
    assert folder_paths.get_filename_list(kind) == listed


def test_a_filter_set_by_someone_else_is_left_alone(folder_paths, tmp_path):
    glue = pack_module("nodes.common.comfy_glue")
    put(tmp_path / "models" / "ipadapter", "ip.bin", "ip.safetensors")
    folder_paths.folder_names_and_paths["ipadapter"] = ([str(tmp_path / "models" / "ipadapter")], {".safetensors"})
    glue.register_folder("ipadapter")
    assert folder_paths.get_filename_list("ipadapter") == ["ip.safetensors"]


def test_pixel_guide_list_shows_only_files_its_loader_reads(folder_paths, tmp_path):
    glue = pack_module("nodes.common.comfy_glue")
    put(tmp_path / "models" / "pixel_guide", "old.pt", "mine.safetensors")
    glue.register_model_folders()
    listed = folder_paths.get_filename_list("pixel_guide")
    assert "mine.safetensors" in listed and "old.pt" not in listed
    assert "boundless_demo_f16_guide.safetensors" in listed           # the pack's bundled guide
