"""Tests of mrfound/models/checkpoint.py: safe save/load, validation, name resolution."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mrfound.data.sequences import Vocabulary
from mrfound.errors import CheckpointError
from mrfound.models.checkpoint import (
    load_checkpoint,
    load_model,
    read_config,
    resolve_checkpoint,
    save_checkpoint,
)
from mrfound.models.encoder import MultiSequenceViT
from mrfound.models.mae import MaskedModalityAutoencoder


@pytest.fixture()
def model(enc_cfg, mae_cfg) -> MaskedModalityAutoencoder:
    torch.manual_seed(0)
    return MaskedModalityAutoencoder(enc_cfg, mae_cfg).eval()


@pytest.fixture()
def ckpt(model, tmp_path) -> Path:
    return save_checkpoint(tmp_path / "ck", model, {"provenance": {"step": 7}})


def _rewrite_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


def test_round_trip_gives_identical_outputs(model, ckpt, batch) -> None:
    cfg = read_config(ckpt)
    assert cfg["architecture"] == "masked_modality_autoencoder" and cfg["format_version"] == 1
    assert cfg["vocabulary"] == Vocabulary().to_dict() and cfg["provenance"]["step"] == 7
    assert cfg["preprocessing"]["roi_size"] == 32 and cfg["mae"]["decoder_dim"] == 32
    assert sorted(p.name for p in ckpt.iterdir()) == ["config.json", "model.safetensors"]
    loaded, _ = load_model(ckpt)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(
            model.encoder.embed(batch["image"], batch["available"]),
            loaded.encoder.embed(batch["image"], batch["available"]),
        )
        a = model(batch, generator=torch.Generator().manual_seed(1))
        b = loaded(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a["loss"], b["loss"])


def test_encoder_only_checkpoint(enc_cfg, tmp_path, batch) -> None:
    enc = MultiSequenceViT(enc_cfg).eval()
    save_checkpoint(tmp_path / "enc", enc)
    loaded, cfg = load_model(tmp_path / "enc")
    assert cfg["architecture"] == "multi_sequence_vit" and isinstance(loaded, MultiSequenceViT)
    with torch.no_grad():
        assert torch.equal(
            enc.embed(batch["image"], batch["available"]), loaded.embed(batch["image"], batch["available"])
        )


def test_failed_save_keeps_previous_checkpoint(model, ckpt, monkeypatch) -> None:
    before = (ckpt / "model.safetensors").read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(ckpt, model)
    assert (ckpt / "model.safetensors").read_bytes() == before
    assert [p.name for p in ckpt.parent.iterdir()] == ["ck"]  # no temporary folder left behind


def test_pickle_files_are_refused(model, tmp_path) -> None:
    torch.save(model.state_dict(), tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(tmp_path / "model.pt")
    folder = tmp_path / "legacy"
    folder.mkdir()
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(folder)


def test_pickle_disguised_as_safetensors_is_refused(model, ckpt) -> None:
    torch.save(model.state_dict(), ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="pickle"):
        load_checkpoint(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(CheckpointError, match="not a valid safetensors"):
        load_checkpoint(ckpt)


@pytest.mark.parametrize("problem", ["missing", "extra", "shape"])
def test_mismatching_tensors_are_named(model, ckpt, problem) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if problem == "missing":
        del state["decoder_pred.weight"]
        pattern = "missing tensors decoder_pred.weight"
    elif problem == "extra":
        state["head.fc.weight"] = torch.zeros(2, 2)
        pattern = "unexpected tensors head.fc.weight"
    else:
        state["encoder.seq_embed"] = torch.zeros(9, 32)
        pattern = r"wrong shapes encoder.seq_embed \(9, 32\) \(expected \(8, 32\)\)"
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(ckpt)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"architecture": "resnet50"}, "unknown architecture 'resnet50'"),
        ({"format_version": 99}, "format 99 is newer"),
        ({"mrfound_version": "7.0.0"}, "different major version"),
        ({"encoder": {"embed_dim": 32, "depthh": 2}}, "unknown EncoderConfig key"),
    ],
)
def test_invalid_configs_are_refused(ckpt, changes, pattern) -> None:
    _rewrite_config(ckpt, **changes)
    with pytest.raises(CheckpointError, match=pattern):
        load_checkpoint(ckpt)


def test_broken_json_is_refused(ckpt) -> None:
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(ckpt)


def test_registry_names_resolve_inside_mrfound_home(model, tmp_path, monkeypatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("MRFOUND_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    save_checkpoint(home / "models" / "liver-tiny", model)
    assert resolve_checkpoint("liver-tiny") == (home / "models" / "liver-tiny").resolve()
    assert resolve_checkpoint(str(home / "models" / "liver-tiny" / "config.json")).name == "liver-tiny"
    with pytest.raises(CheckpointError, match=r"no model of that name.*known: liver-tiny"):
        resolve_checkpoint("liver-base")
    save_checkpoint(tmp_path / "outside", model)
    for name in ("x/../../outside", "models/../../outside", "a/./b"):
        with pytest.raises(CheckpointError, match="not a valid model name"):
            resolve_checkpoint(name)
    os.symlink(tmp_path / "outside", home / "models" / "sneaky")
    with pytest.raises(CheckpointError, match="outside"):
        resolve_checkpoint("sneaky")
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resolve_checkpoint(str(tmp_path / "nope"))


@pytest.mark.parametrize(
    "bad",
    [
        "hf://owner",
        "hf://owner/repo/extra",
        "hf://../repo",
        "hf://own er/repo",
        "hf://owner/re--po",
        "hf://owner/repo@../../etc",
        "hf://owner/repo@",
        "hf://-owner/repo",
        "hf://owner/repo.git",
        "hf://",
    ],
)
def test_bad_hub_ids_are_refused_before_any_request(bad, monkeypatch) -> None:
    def no_request(*args, **kwargs):
        raise AssertionError("a request was attempted")

    monkeypatch.setattr("huggingface_hub.snapshot_download", no_request)
    with pytest.raises(CheckpointError, match="not a valid Hugging Face id"):
        resolve_checkpoint(bad)


def _fake_hub_cache(cache: Path, repo: str, src: Path) -> Path:
    """The layout huggingface_hub's cache uses: refs/main -> commit, snapshots/<commit>/files."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    snap = root / "snapshots" / commit
    snap.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snap / name).write_bytes((src / name).read_bytes())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snap


def test_hub_ids_resolve_offline_from_the_local_cache(model, ckpt, tmp_path, batch) -> None:
    cache = tmp_path / "hf-cache"
    snap = _fake_hub_cache(cache, "mrfound/liver-tiny", ckpt)
    assert resolve_checkpoint("hf://mrfound/liver-tiny", cache_dir=cache, local_files_only=True) == snap
    assert resolve_checkpoint("hf://mrfound/liver-tiny@main", cache_dir=cache, local_files_only=True) == snap
    loaded, cfg = load_model("hf://mrfound/liver-tiny", cache_dir=cache, local_files_only=True)
    with torch.no_grad():
        assert torch.equal(
            loaded.encoder.embed(batch["image"], batch["available"]),
            model.encoder.embed(batch["image"], batch["available"]),
        )
    with pytest.raises(CheckpointError, match="could not get it from the Hugging Face Hub"):
        resolve_checkpoint("hf://mrfound/unknown", cache_dir=cache, local_files_only=True)


def test_source_mixing_model_round_trips(enc_cfg, mae_cfg, tmp_path, batch) -> None:
    torch.manual_seed(0)
    cfg = mae_cfg.replace(
        norm_pix_loss=False, source_mixing=True, source_features=4, decoder_seq_embed_std=0.5
    )
    model = MaskedModalityAutoencoder(enc_cfg.replace(seq_embed_std=0.5), cfg).eval()
    with torch.no_grad():
        model.decoder_mix_table.normal_()  # non-zero, so a lost table would show
        model.decoder_voxel_out.weight.normal_()  # likewise the per-voxel features' output weights
    loaded, config = load_model(save_checkpoint(tmp_path / "mix", model))
    assert config["mae"]["source_mixing"] and config["encoder"]["seq_embed_std"] == 0.5
    assert config["mae"]["source_features"] == 4
    torch.testing.assert_close(loaded.decoder_mix_table, model.decoder_mix_table)
    torch.testing.assert_close(loaded.decoder_voxel_out.weight, model.decoder_voxel_out.weight)
    with torch.no_grad():
        a = model.reconstruct(batch["image"], batch["available"] | True, ["t1_del"])
        b = loaded.reconstruct(batch["image"], batch["available"] | True, ["t1_del"])
    assert torch.equal(a, b)
