"""ONNX export and the onnxruntime runtime: parity, fp16 policy, dynamic batch, metadata, errors."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest
import torch

from cleandift_rt.artifacts import ArtifactError, read_sidecar, sidecar_path
from cleandift_rt.errors import InputSizeError
from cleandift_rt.imaging import prepare_image
from cleandift_rt.models import load_model
from cleandift_rt.runtime import load_runtime
from export import ExportError, ExportOptions, export_model

TAPS = ("us6", "mid")
SIZE = 128


def photos(n: int) -> np.ndarray:
    from skimage import data

    pics = [data.astronaut(), data.chelsea(), data.coffee()]
    return np.stack([prepare_image(pics[i % 3], SIZE).array for i in range(n)])


@pytest.fixture(scope="module")
def reference():
    net = load_model("tiny").feature_net(list(TAPS))
    with torch.no_grad():
        return dict(zip(TAPS, net(torch.from_numpy(photos(3)))))


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts")
    made = {}
    for precision in ("fp32", "fp16"):
        options = ExportOptions(model="tiny", taps=TAPS, height=SIZE, width=SIZE, batch=1,
                                max_batch=4, precision=precision, out=str(out),
                                device="cpu")  # fmt: skip
        made[precision] = export_model(options, log=lambda _: None)
    return made


@pytest.mark.parametrize("batch", [1, 3])
def test_fp32_onnx_equals_pytorch_for_dynamic_batches(artifacts, reference, batch):
    runner = load_runtime(artifacts["fp32"][0]).runner
    outputs = runner(photos(batch))
    for tap in TAPS:
        ref = reference[tap][:batch]
        rel = (outputs[tap] - ref).abs().max() / ref.abs().max()
        assert outputs[tap].shape == ref.shape and rel < 1e-4, (tap, float(rel))


def test_fp16_onnx_keeps_cosine_and_fp32_islands(artifacts, reference):
    import onnx

    path, meta = artifacts["fp16"]
    outputs = load_runtime(path).runner(photos(3))
    for tap in TAPS:
        assert outputs[tap].dtype == torch.float16 and torch.isfinite(outputs[tap]).all()
        cos = torch.nn.functional.cosine_similarity(
            outputs[tap].float().flatten(1), reference[tap].flatten(1), dim=1
        )
        assert (cos >= 0.999).all(), (tap, cos)
        assert meta.validation[tap]["cosine"] >= 0.999
    graph = onnx.load(str(path)).graph
    # conv / linear weights are half precision; GroupNorm affine parameters (C, 1, 1) stay fp32
    weights = {i.data_type for i in graph.initializer if sum(d > 1 for d in i.dims) >= 2}
    assert weights == {onnx.TensorProto.FLOAT16}
    # attention probabilities are computed in fp32: every Softmax reads and writes fp32
    inferred = onnx.shape_inference.infer_shapes(onnx.load(str(path))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.value_info}
    softmax = [n for n in inferred.node if n.op_type == "Softmax"]
    assert softmax and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in softmax)
    norms = [
        n for n in inferred.node if n.op_type in ("InstanceNormalization", "GroupNormalization")
    ]
    assert norms and all(types[n.input[0]] == onnx.TensorProto.FLOAT for n in norms)


def test_batch_outside_the_exported_range_is_refused(artifacts):
    runner = load_runtime(artifacts["fp32"][0]).runner
    with pytest.raises(InputSizeError, match="rebuild: cleandift-rt export"):
        runner(photos(5))
    with pytest.raises(InputSizeError, match="takes 128x128"):
        runner(np.zeros((1, 64, 64, 3), np.uint8))


def test_metadata_round_trip(artifacts):
    path, meta = artifacts["fp32"]
    again = read_sidecar(path)
    assert again == meta
    assert again.output_shape(2) == {"us6": [2, 64, 8, 8], "mid": [2, 64, 2, 2]}
    data = json.loads(sidecar_path(path).read_text())
    assert data["input_layout"] == "NHWC" and data["input_dtype"] == "uint8"
    assert data["batch"] == [1, 4] and data["producer"]["torch"] == torch.__version__
    assert "--max-batch 4" in data["rebuild"]
    assert load_runtime(path).match(photos(1)[0], photos(1)[0], [(40.0, 60.0)]).scores[0] > 0.99


def copy_artifact(path, dest):
    dest.mkdir()
    shutil.copy(path, dest / path.name)
    shutil.copy(sidecar_path(path), dest / sidecar_path(path).name)
    return dest / path.name


def test_truncated_artifact_is_a_one_line_error(artifacts, tmp_path):
    path = copy_artifact(artifacts["fp32"][0], tmp_path / "cut")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="cannot load ONNX artifact") as info:
        load_runtime(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "edit,message",
    [
        (lambda d: d.update(artifact="other.onnx"), "describes 'other.onnx'"),
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d.pop("taps"), "bad metadata"),
        (lambda d: d.update(format="pickle"), "unknown artifact format"),
    ],
)
def test_mismatched_sidecar_is_a_one_line_error(artifacts, tmp_path, edit, message):
    path = copy_artifact(artifacts["fp32"][0], tmp_path / "bad")
    data = json.loads(sidecar_path(path).read_text())
    edit(data)
    sidecar_path(path).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=message) as info:
        load_runtime(path)
    assert "\n" not in str(info.value)


def test_missing_sidecar_or_artifact(artifacts, tmp_path):
    path = copy_artifact(artifacts["fp32"][0], tmp_path / "nosidecar")
    sidecar_path(path).unlink()
    with pytest.raises(ArtifactError, match="no metadata sidecar"):
        load_runtime(path)
    with pytest.raises(ArtifactError, match="does not exist"):
        load_runtime(tmp_path / "missing.onnx")


def test_two_threads_share_one_runtime(artifacts):
    runner = load_runtime(artifacts["fp32"][0]).runner
    inputs = [photos(1), photos(3)[1:3]]
    expected = [runner(x) for x in inputs]
    results: dict[int, list] = {0: [], 1: []}

    def work(i):
        for _ in range(4):
            results[i].append(runner(inputs[i]))

    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(results[i]) == 4
        for out in results[i]:
            for tap in TAPS:
                assert torch.equal(out[tap], expected[i][tap])


def test_failed_validation_keeps_no_artifact(tmp_path, monkeypatch):
    import export.validate as validate

    monkeypatch.setitem(validate.MIN_COSINE, "fp32", 1.5)  # nothing can pass
    options = ExportOptions(model="tiny", taps=("us6",), height=64, width=64, precision="fp32",
                            out=str(tmp_path / "out"), device="cpu")  # fmt: skip
    with pytest.raises(ExportError, match="failed validation"):
        export_model(options, log=lambda _: None)
    assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize(
    "changes,message",
    [({"height": 100}, "multiples of 64"), ({"format": "tflite"}, "unknown format"),
     ({"batch": 4, "max_batch": 2}, "batch"), ({"precision": "int8"}, "unknown precision")],
)  # fmt: skip
def test_bad_options_are_refused_before_any_work(tmp_path, changes, message):
    options = ExportOptions(model="tiny", out=str(tmp_path / "o"), device="cpu", **changes)
    with pytest.raises(ExportError, match=message):
        export_model(options, log=lambda _: None)
    assert not (tmp_path / "o").exists()


def test_export_cli_json_and_errors(tmp_path, capsys):
    from cleandift_rt.cli import main

    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as code:
        main(["export", "--resolution", "64", "--taps", "up1", "--precision", "fp32",
              "--device", "cpu", "--out", str(out), "--json"])  # fmt: skip
    assert code.value.code == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["outputs"] == {"us6": ["batch", 64, 4, 4]} and payload["format"] == "onnx"
    assert sorted(p.name for p in out.iterdir()) == [
        "toy-us6-64x64-b1-fp32.onnx", "toy-us6-64x64-b1-fp32.onnx.json"]  # fmt: skip
    with pytest.raises(SystemExit) as code:
        main(["export", "--resolution", "96", "--device", "cpu", "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert not (tmp_path / "x").exists()


def test_extractor_fits_batches_to_the_artifact_range(tmp_path, reference):
    """5 images through an artifact taking 2..3 per batch: chunks of 3, the last padded."""
    options = ExportOptions(model="tiny", taps=TAPS, height=SIZE, width=SIZE, batch=2,
                            max_batch=3, precision="fp32", out=str(tmp_path), device="cpu",
                            validate=False)  # fmt: skip
    path, _ = export_model(options, log=lambda _: None)
    images = list(photos(3)) + list(photos(2))
    feats = load_runtime(path)(images, batch_size=8)
    assert feats["us6"].shape[0] == 5
    torch.testing.assert_close(feats["us6"][3:5], reference["us6"][:2], rtol=1e-4, atol=1e-4)


# ------------------------------------------- several taps, dynamic batch, optional folding

FOUR_TAPS = ("us3", "us6", "us9", "us12")


def hide_modules(monkeypatch, *names: str) -> None:
    """Make ``import name`` (and its submodules, even already imported ones) fail."""
    import sys

    for name in names:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")] + [name]:
            monkeypatch.setitem(sys.modules, key, None)


def small_photos(n: int, size: int = 64) -> np.ndarray:
    from skimage import data

    pics = [data.astronaut(), data.chelsea(), data.coffee()]
    return np.stack([prepare_image(pics[i % 3], size).array for i in range(n)])


@pytest.mark.parametrize("folding", ["polygraphy", "none"])
def test_four_tap_dynamic_batch_runs_with_and_without_folding(tmp_path, monkeypatch, folding):
    import onnx

    from export.onnx_export import folding_available

    if folding == "none":
        hide_modules(monkeypatch, "polygraphy", "onnx_graphsurgeon")
    assert folding_available() is (folding == "polygraphy")  # dev extra: polygraphy installed
    options = ExportOptions(model="tiny", taps=FOUR_TAPS, height=64, width=64, batch=1,
                            max_batch=2, precision="fp32", out=str(tmp_path), device="cpu",
                            validate=False)  # fmt: skip
    path, meta = export_model(options, log=lambda _: None)
    graph = onnx.load(str(path)).graph
    declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]
                for o in graph.output}  # fmt: skip
    assert declared == meta.output_shape() == {
        "us3": ["batch", 64, 2, 2], "us6": ["batch", 64, 4, 4],
        "us9": ["batch", 64, 8, 8], "us12": ["batch", 32, 8, 8]}  # fmt: skip
    # polygraphy's folding turns every Constant node into an initializer; without it they stay
    assert any(n.op_type == "Constant" for n in graph.node) is (folding == "none")

    net = load_model("tiny").feature_net(list(FOUR_TAPS))
    images = small_photos(2)
    with torch.no_grad():
        reference = dict(zip(FOUR_TAPS, net(torch.from_numpy(images))))
    runner = load_runtime(path).runner
    for batch in (1, 2):
        outputs = runner(images[:batch])
        for tap in FOUR_TAPS:
            ref = reference[tap][:batch]
            assert outputs[tap].shape == ref.shape, tap
            cos = torch.nn.functional.cosine_similarity(
                outputs[tap].flatten(1), ref.flatten(1), dim=1
            )
            assert (cos >= 0.99999).all(), (tap, batch, cos)


def test_fp16_export_stays_near_its_parameter_bytes(tmp_path):
    import onnx

    from export.precision import apply_precision_policy

    # static shapes, all U-Net weights used (us12), polygraphy folding on: where a zero-filled
    # (B·heads, L, L) attention scratch buffer used to be folded into the file
    options = ExportOptions(model="tiny", taps=("us12",), height=64, width=64, batch=1,
                            precision="fp16", out=str(tmp_path), device="cpu",
                            validate=False)  # fmt: skip
    path, _ = export_model(options, log=lambda _: None)  # (the fp16 runtime test is above)
    net = apply_precision_policy(load_model("tiny").feature_net(["us12"]), torch.float16)
    param_bytes = sum(p.numel() * p.element_size() for p in net.parameters())  # all but conv_out
    size = path.stat().st_size
    assert size <= 1.2 * param_bytes + 2**20, (size, param_bytes)
    model = onnx.load(str(path))
    zeros = [i.name for i in model.graph.initializer
             if np.prod(i.dims) > 1024 and not onnx.numpy_helper.to_array(i).any()]  # fmt: skip
    assert zeros == [], zeros


def test_folding_keeps_large_tensors_out_of_the_file(monkeypatch):
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper

    from export.onnx_export import FOLD_SIZE_LIMIT, fold_constants

    def const(name, values):
        tensor = helper.make_tensor(name + "_v", TensorProto.INT64, [len(values)], values)
        return helper.make_node("Constant", [], [name], value=tensor)

    zero = helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        const("big_shape", [1024, 1024]),  # 4 MiB of zeros: never folded
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=zero),
        helper.make_node("Add", ["x", "big"], ["y"]),
        const("small_shape", [1, 1024]),  # 4 KiB of ones: folded
        helper.make_node("ConstantOfShape", ["small_shape"], ["small"], value=one),
        helper.make_node("Add", ["y", "small"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1024])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1024, 1024])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    folded = fold_constants(model)
    sizes = [onnx.numpy_helper.to_array(i).nbytes for i in folded.graph.initializer]
    assert sizes and max(sizes) <= FOLD_SIZE_LIMIT  # the small one folded, the big one not
    assert "ConstantOfShape" in {n.op_type for n in folded.graph.node}
    session = onnxruntime.InferenceSession(folded.SerializeToString())
    x = np.full((1, 1024), 2.0, np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], np.full((1024, 1024), 3.0))

    hide_modules(monkeypatch, "onnx_graphsurgeon")  # polygraphy cannot fold without it
    assert fold_constants(model) is model


def test_export_failures_are_one_line(tmp_path, monkeypatch, capsys):
    import cleandift_rt.runtime
    from cleandift_rt.cli import main

    def run(out):
        with pytest.raises(SystemExit) as code:
            main(["export", "--model", "tiny", "--resolution", "64", "--taps", "mid",
                  "--precision", "fp32", "--device", "cpu", "--out", str(out)])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
        errors = [line for line in err if not line.startswith("[")]
        assert code.value.code == 2 and len(errors) == 1 and errors[0] == err[-1], err
        assert not list(out.iterdir())  # nothing published
        return err[-1]

    def exploding_exporter(*args, **kwargs):
        raise RuntimeError("exporter exploded\nwith a second line")

    with monkeypatch.context() as patch:
        patch.setattr(torch.onnx, "export", exploding_exporter)
        assert run(tmp_path / "a") == ("error: writing the onnx artifact failed: exporter exploded")

    class RefusingRuntime:  # as onnxruntime refusing a graph at run time
        def extract_prepared(self, batch, **options):  # the extractor's one batching path
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Shape mismatch\ndetails")

    hide_modules(monkeypatch, "polygraphy")  # (no folding: a faster export)
    monkeypatch.setattr(cleandift_rt.runtime, "load_runtime", lambda *a, **k: RefusingRuntime())
    assert run(tmp_path / "b") == (
        "error: the exported onnx artifact does not run: "
        "[ONNXRuntimeError] : 1 : FAIL : Shape mismatch"
    )
