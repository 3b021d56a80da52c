"""Triton Inference Server model repositories (cleandift_rt/serving/triton_repo.py), CPU only.

Triton itself does not run here (see FACTS): every generated ``config.pbtxt`` is parsed with the
ModelConfig protobuf that ``tritonclient`` ships and checked field by field against the
artifact's sidecar and against the ONNX graph it describes; the repository's model loads with
``load_runtime`` and computes what the exported artifact computes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from cleandift_rt import cli
from cleandift_rt.artifacts import ArtifactError, read_sidecar
from cleandift_rt.serving.triton_repo import TritonModel, write_triton_repository

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2", reason="needs tritonclient (the triton-client extra)"
)
TYPES = {"fp32": "TYPE_FP32", "fp16": "TYPE_FP16", "bf16": "TYPE_BF16"}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory) -> Path:
    """tiny at 64 px, taps mid and us3 (a short graph), batches 1..4, fp32 ONNX."""
    from export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("artifacts")
    options = ExportOptions(model="tiny", taps=("mid", "us3"), height=64, width=64, batch=1,
                            max_batch=4, precision="fp32", format="onnx", out=str(out),
                            device="cpu", validate=False)  # fmt: skip
    path, _ = export_model(options, log=lambda line: None)
    return path


def parse(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


def check_against_sidecar(config, meta) -> None:
    """Every field of a parsed ModelConfig against the artifact metadata it was made from."""
    lo, hi = meta.batch
    batched = lo == 1
    DataType = model_config_pb2.DataType
    platform = {"onnx": "onnxruntime_onnx", "engine": "tensorrt_plan"}[meta.format]
    assert config.platform == platform
    assert config.max_batch_size == (hi if batched else 0)
    lead = [] if batched else [lo]
    assert len(config.input) == 1
    (inp,) = config.input
    assert inp.name == meta.input_name == "images"
    assert DataType.Name(inp.data_type) == "TYPE_UINT8"
    assert list(inp.dims) == lead + [meta.height, meta.width, 3]
    if batched:
        assert model_config_pb2.ModelInput.Format.Name(inp.format) == "FORMAT_NHWC"
    assert [o.name for o in config.output] == [t.name for t in meta.taps]
    for out, tap in zip(config.output, meta.taps):
        assert DataType.Name(out.data_type) == TYPES[meta.precision]
        assert list(out.dims) == lead + [tap.channels, meta.height // tap.stride,
                                         meta.width // tap.stride]  # fmt: skip
    if batched and hi > 1:
        assert config.HasField("dynamic_batching")
        sizes = list(config.dynamic_batching.preferred_batch_size)
        assert sizes == sorted(set(sizes)) and sizes[-1] == hi and all(1 < s <= hi for s in sizes)
        assert config.dynamic_batching.max_queue_delay_microseconds == 5000
    else:
        assert not config.HasField("dynamic_batching")
    if meta.format == "engine":
        (group,) = config.instance_group
        assert model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind) == "KIND_GPU"
        assert group.count == 1


def test_repository_of_an_onnx_artifact(artifact, tmp_path):
    repo = tmp_path / "repo"
    model_dir = write_triton_repository(artifact, repo)
    assert model_dir == repo / artifact.stem
    assert sorted(p.relative_to(model_dir).as_posix() for p in model_dir.rglob("*")) == [
        "1", "1/model.onnx", "1/model.onnx.json", "config.pbtxt"
    ]  # fmt: skip
    assert list(repo.iterdir()) == [model_dir], "staging folder left behind"
    meta = read_sidecar(model_dir / "1" / "model.onnx")  # the sidecar names the copy
    source = read_sidecar(artifact)
    assert meta.weights_sha256 == source.weights_sha256 and meta.taps == source.taps
    assert meta.build["triton"]["platform"] == "onnxruntime_onnx"
    config = parse((model_dir / "config.pbtxt").read_text())
    assert config.name == model_dir.name
    check_against_sidecar(config, meta)


def test_config_matches_the_onnx_graph(artifact, tmp_path):
    """Names, element types and non-batch dims of the graph are the config's."""
    import onnx

    model_dir = write_triton_repository(artifact, tmp_path, name="tiny_fp32")
    config = parse((model_dir / "config.pbtxt").read_text())
    graph = onnx.load(str(model_dir / "1" / "model.onnx"), load_external_data=False).graph
    onnx_type = {"TYPE_UINT8": onnx.TensorProto.UINT8, "TYPE_FP32": onnx.TensorProto.FLOAT}
    DataType = model_config_pb2.DataType
    pairs = [(config.input[0], graph.input[0])] + list(zip(config.output, graph.output))
    assert len(graph.output) == len(config.output)
    for declared, value in pairs:
        tensor = value.type.tensor_type
        assert value.name == declared.name
        assert tensor.elem_type == onnx_type[DataType.Name(declared.data_type)]
        dims = tensor.shape.dim
        assert dims[0].dim_param, "the batch axis is dynamic"
        assert [d.dim_value for d in dims[1:]] == list(declared.dims)


def test_the_repository_model_runs_like_the_artifact(artifact, tmp_path):
    from cleandift_rt.runtime import load_runtime

    model_dir = write_triton_repository(artifact, tmp_path)
    images = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    want = load_runtime(artifact, device="cpu").runner(images)
    got = load_runtime(model_dir / "1" / "model.onnx", device="cpu").runner(images)
    for tap in want:
        np.testing.assert_array_equal(got[tap].numpy(), want[tap].numpy())


@pytest.mark.parametrize(
    "variant",
    [
        {"format": "engine", "precision": "fp16", "batch": (1, 8)},
        {"format": "engine", "precision": "bf16", "batch": (1, 6)},
        {"format": "onnx", "precision": "fp16", "batch": (1, 1)},
        {"format": "onnx", "precision": "fp32", "batch": (4, 4)},
        {"format": "onnx", "precision": "fp32", "batch": (1, 32)},
    ],
    ids=lambda v: f"{v['format']}-{v['precision']}-b{v['batch'][0]}-{v['batch'][1]}",
)
def test_every_config_variant_parses_and_matches_its_metadata(artifact, variant):
    meta = replace(read_sidecar(artifact), **variant)
    config = parse(TritonModel.from_metadata(meta, "m").to_pbtxt())
    assert config.name == "m"
    check_against_sidecar(config, meta)


@pytest.mark.parametrize(
    "variant, word",
    [
        ({"format": "aoti"}, "aoti"),
        ({"batch": (2, 8)}, "--batch 1 --max-batch 8"),
    ],
)
def test_artifacts_triton_cannot_serve_are_refused(artifact, variant, word):
    meta = replace(read_sidecar(artifact), **variant)
    with pytest.raises(ArtifactError, match=word.replace("-", r"\-")):
        TritonModel.from_metadata(meta, "m")


def test_rewriting_replaces_the_model_and_bad_names_are_refused(artifact, tmp_path):
    first = write_triton_repository(artifact, tmp_path, name="m", queue_delay_us=100)
    again = write_triton_repository(artifact, tmp_path, name="m", queue_delay_us=250)
    assert first == again and sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    config = parse((again / "config.pbtxt").read_text())
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    with pytest.raises(ArtifactError, match="name"):
        write_triton_repository(artifact, tmp_path, name="a/b")


def test_export_command_from_an_artifact(artifact, tmp_path, capsys):
    repo = tmp_path / "repo"
    with pytest.raises(SystemExit) as caught:
        cli.main(["export", "--format", "triton", "--from", str(artifact), "--out", str(repo),
                  "--triton-name", "tiny", "--json"])  # fmt: skip
    out, err = capsys.readouterr()
    assert caught.value.code == 0, err
    payload = json.loads(out)
    assert payload["model"] == "tiny" and Path(payload["path"]) == repo / "tiny"
    config = parse(payload["config"])
    check_against_sidecar(config, read_sidecar(repo / "tiny" / "1" / "model.onnx"))
    assert "--format triton" in read_sidecar(repo / "tiny" / "1" / "model.onnx").rebuild


@pytest.mark.parametrize(
    "args, word",
    [
        (["--format", "triton", "--from", "missing.onnx"], "missing.onnx"),
        (["--format", "onnx", "--from", "x.onnx"], "--format triton"),
    ],
)
def test_export_command_refuses_bad_triton_input(args, word, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(["export", *args, "--out", str(tmp_path / "repo")])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert caught.value.code == 2 and len(lines) == 1 and word in lines[0], err
    assert not (tmp_path / "repo").exists() or not any((tmp_path / "repo").iterdir())
