"""TensorRT backend.

Everywhere: the pure decisions (strongly typed or not, engine/GPU mismatch message), the ONNX
rewrite for TensorRT's uint8 input rule, fp32-island pinning and the builder configuration
(against a stand-in of the documented TensorRT Python API). With TensorRT and a CUDA GPU
(marker ``tensorrt``): a real engine export, accuracy, batch limits, refusals, concurrency.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import threading
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cleandift_rt.artifacts import ArtifactError, ArtifactMetadata, TapOutput
from cleandift_rt.backends.tensorrt_runner import TensorRTRunner, mismatch_reason, parse_version
from cleandift_rt.errors import CleanDIFTError, InputSizeError
from export.tensorrt_build import (
    TensorRTBuildError,
    build_engine,
    cast_uint8_input,
    pin_fp32_islands,
    uses_strongly_typed,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None
HAS_GPU = torch.cuda.is_available()
requires_trt = pytest.mark.skipif(
    not (HAS_TRT and HAS_GPU),
    reason="TensorRT tests need the tensorrt package and a CUDA GPU: not available here",
)
TAPS = ("mid", "us3", "us6")
REBUILD = "cleandift-rt export --model tiny --format engine"


def engine_meta(trt="10.12.0.36", gpu="NVIDIA H100 80GB HBM3", cc="9.0") -> ArtifactMetadata:
    return ArtifactMetadata(
        format="engine",
        artifact="tiny-us6-128x128-fp16.engine",
        model="tiny",
        weights_sha256="0" * 64,
        timestep=261.0,
        taps=[TapOutput("us6", 64, 16)],
        height=128,
        width=128,
        batch=(1, 4),
        precision="fp16",
        producer={"tensorrt": trt} if trt else {},
        target={"gpu": gpu, "compute_capability": cc} if gpu else {},
        rebuild=REBUILD,
    )


# ---------------------------------------------------------------- pure decisions (CPU)


@pytest.mark.parametrize(
    "version, expected",
    [("10.12.0.36", (10, 12, 0, 36)), ("10.13.0rc1", (10, 13, 0)), ("11", (11,)), ("x", ())],
)
def test_parse_version(version, expected):
    assert parse_version(version) == expected


@pytest.mark.parametrize(
    "version, strongly_typed",
    [("10.12.0.36", True), ("10.13.3", True), ("11.0.0", True), ("10.11.0.33", False),
     ("10.3.0", False), ("9.3.0.1", False), ("10.12", True), ("10.9.0", False)],
)  # fmt: skip
def test_uses_strongly_typed(version, strongly_typed):
    assert uses_strongly_typed(version) is strongly_typed


def test_mismatch_reason_none_when_engine_fits():
    meta = engine_meta()
    assert mismatch_reason(meta, "10.12.0.36", "NVIDIA H100 80GB HBM3", "9.0") is None
    assert mismatch_reason(meta, "10.12.0.36", "nvidia h100 80gb hbm3", (9, 0)) is None


@pytest.mark.parametrize(
    "here",
    [
        ("10.13.0.35", "NVIDIA H100 80GB HBM3", "9.0"),  # other TensorRT
        ("10.12.0.36", "NVIDIA L40S", "8.9"),  # other GPU and architecture
        ("10.12.0.36", "NVIDIA H200", "9.0"),  # same architecture, other GPU
    ],
)
def test_mismatch_reason_names_both_sides_and_rebuild(here):
    reason = mismatch_reason(engine_meta(), *here)
    trt, gpu, cc = here
    assert reason == (
        "engine built with TensorRT 10.12.0.36 for GPU NVIDIA H100 80GB HBM3 (sm_90), "
        f"this is TensorRT {trt} on {gpu} (sm_{cc.replace('.', '')}); rebuild: {REBUILD}"
    )
    assert "\n" not in reason


def test_mismatch_reason_without_build_facts():
    reason = mismatch_reason(engine_meta(trt=None, gpu=None), "10.12.0.36", "NVIDIA H200", (9, 0))
    assert reason.startswith("engine built with TensorRT unknown for GPU unknown (sm_?)")
    assert reason.endswith(f"rebuild: {REBUILD}")


def test_runner_refuses_cpu_and_missing_tensorrt(tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(CleanDIFTError, match="CUDA GPU"):
        TensorRTRunner(engine, engine_meta(), torch.device("cpu"))


@pytest.mark.skipif(HAS_TRT, reason="checks the message shown without tensorrt")
def test_write_engine_without_tensorrt_says_how_to_install():
    from export.tensorrt_build import write_engine

    with pytest.raises(CleanDIFTError, match=r"pip install 'cleandift-rt\[trt\]'"):
        write_engine(None, "x.engine", SimpleNamespace(), engine_meta())


# ---------------------------------------------------------------- ONNX uint8 input (CPU)


def _run_onnx(model, images: np.ndarray) -> list[np.ndarray]:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": images})


def _input_consumers(model):
    return [n for n in model.graph.node if "images" in n.input]


def test_cast_uint8_input_on_small_graph():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Transpose", ["images"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["y"], to=TensorProto.FLOAT16),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", 2, 3, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["batch", 3, 2, 3])],
        value_info=[helper.make_tensor_value_info("t", TensorProto.UINT8, ["batch", 3, 2, 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    images = np.random.default_rng(0).integers(0, 256, (2, 2, 3, 3), dtype=np.uint8)
    before = _run_onnx(model, images)

    assert cast_uint8_input(model)
    onnx.checker.check_model(model, full_check=True)
    (first,) = _input_consumers(model)
    assert first.op_type == "Cast" and first.attribute[0].i == TensorProto.FLOAT
    assert model.graph.value_info[0].type.tensor_type.elem_type == TensorProto.FLOAT
    np.testing.assert_array_equal(_run_onnx(model, images)[0], before[0])
    assert not cast_uint8_input(model)  # idempotent: the input now feeds a Cast to float


def test_cast_uint8_input_leaves_other_graphs_alone():
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    add = helper.make_node("Add", ["images", "images"], ["y"])
    graph = helper.make_graph(
        [add],
        "g",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2])],
    )
    model = helper.make_model(graph)
    assert not cast_uint8_input(model)
    assert [n.op_type for n in model.graph.node] == ["Add"]


def test_cast_uint8_input_on_featurenet_graph(tiny, tmp_path):
    """The exported FeatureNet graph ends up with the uint8 input feeding only a Cast to
    float32, and computes the same features."""
    onnx = pytest.importorskip("onnx")
    from export.onnx_export import write_onnx

    net = tiny.feature_net(("mid",))
    (path,) = write_onnx(net, tmp_path / "net.onnx", 64, 64, (1, 2), 17)
    model = onnx.load(str(path))
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    before = _run_onnx(model, images)

    cast_uint8_input(model)
    consumers = _input_consumers(model)
    assert [(n.op_type, n.attribute[0].i) for n in consumers] == [("Cast", 1)]  # FLOAT
    np.testing.assert_allclose(_run_onnx(model, images)[0], before[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- stand-in TensorRT API (CPU)


class FakeTensor:
    def __init__(self, name, dtype="float32"):
        self.name, self.dtype = name, dtype


class FakeLayer:
    def __init__(self, kind, inputs=(), outputs=()):
        self.type = kind
        self._inputs = [FakeTensor(n) if n else None for n in inputs]
        self._outputs = [FakeTensor(n) for n in outputs]
        self.precision = None
        self.output_types = {}

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, k):
        return self._inputs[k]

    def get_output(self, j):
        return self._outputs[j]

    def set_output_type(self, j, dtype):
        self.output_types[j] = dtype


class FakeNetwork:
    def __init__(self, layers, outputs):
        self.layers, self.outputs = layers, [FakeTensor(n) for n in outputs]

    num_layers = property(lambda self: len(self.layers))
    num_outputs = property(lambda self: len(self.outputs))

    def get_layer(self, i):
        return self.layers[i]

    def get_output(self, i):
        return self.outputs[i]


def attention_network(trt) -> FakeNetwork:
    """conv → norm → (q, k) matmul → mul(scale) → softmax → matmul(v) → conv → output."""
    L = trt.LayerType
    return FakeNetwork(
        [
            FakeLayer(L.CONVOLUTION, ["images"], ["x"]),
            FakeLayer(L.NORMALIZATION, ["x", "gamma", "beta"], ["n"]),
            FakeLayer(L.CONSTANT, [], ["scale"]),
            FakeLayer(L.MATRIX_MULTIPLY, ["n", "n"], ["qk"]),
            FakeLayer(L.ELEMENTWISE, ["qk", "scale"], ["s"]),
            FakeLayer(L.SOFTMAX, ["s"], ["p"]),
            FakeLayer(L.MATRIX_MULTIPLY, ["p", "n"], ["pv"]),
            FakeLayer(L.CONVOLUTION, ["pv"], ["us6"]),
        ],
        ["us6"],
    )


def fake_tensorrt(version="10.12.0.36", parse_ok=True, build_ok=True):
    """The slice of the TensorRT 10 Python API that build_engine uses, recording calls."""
    kinds = ("CONVOLUTION NORMALIZATION CONSTANT MATRIX_MULTIPLY ELEMENTWISE SOFTMAX SCALE "
             "SHUFFLE CAST UNARY IDENTITY").split()  # fmt: skip
    trt = SimpleNamespace(
        __version__=version,
        float32="float32",
        float16="float16",
        bfloat16="bfloat16",
        LayerType=SimpleNamespace(**{k: k for k in kinds}),
        NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=0),
        BuilderFlag=SimpleNamespace(
            FP16="FP16", BF16="BF16", TF32="TF32", PREFER_PRECISION_CONSTRAINTS="PREFER"
        ),
        MemoryPoolType=SimpleNamespace(WORKSPACE="WORKSPACE"),
        calls=SimpleNamespace(flags=set(), cleared=set(), profiles=[], pools={}),
    )
    calls = trt.calls

    class Cache:
        def __init__(self, blob):
            self.blob = bytes(blob)

        def serialize(self):
            return self.blob + b"+timings"

    class Config:
        builder_optimization_level = 3

        def set_memory_pool_limit(self, pool, pool_size):
            calls.pools[pool] = pool_size

        def set_flag(self, flag):
            calls.flags.add(flag)

        def clear_flag(self, flag):
            calls.cleared.add(flag)

        def add_optimization_profile(self, profile):
            calls.profiles.append(profile.shapes)

        def create_timing_cache(self, serialized_timing_cache):
            calls.cache_in = bytes(serialized_timing_cache)
            return Cache(serialized_timing_cache)

        def set_timing_cache(self, cache, ignore_mismatch):
            return True

    class Profile:
        def set_shape(self, input, min, opt, max):
            self.shapes = (input, min, opt, max)

    class Error:
        def desc(self):
            return "No importer registered for op: FancyOp\nmore detail"

        def node(self):
            return 7

        def node_name(self):
            return "/unet/FancyOp_3"

        def node_operator(self):
            return "FancyOp"

    class Parser:
        def __init__(self, network, logger):
            self.num_errors = 0 if parse_ok else 2

        def parse_from_file(self, model):
            calls.parsed = model
            return parse_ok

        def get_error(self, index):
            return Error()

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            calls.network_flags = flags
            calls.network = attention_network(trt)
            return calls.network

        def create_builder_config(self):
            calls.config = Config()
            return calls.config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return b"ENGINE" if build_ok else None

    trt.Builder, trt.OnnxParser = Builder, Parser
    return trt


@pytest.fixture
def fake_logger(monkeypatch):
    logger = SimpleNamespace(last_error=lambda default="": "out of memory while building")
    monkeypatch.setattr("export.tensorrt_build.tensorrt_logger", lambda: logger)
    return logger


def build_options(tmp_path, **kw):
    base = dict(height=128, width=128, batch_range=(1, 4), precision="fp16", workspace_gib=2,
                opt_level=2, timing_cache=str(tmp_path / "cache" / "timing.cache"))  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_pin_fp32_islands_pins_norm_softmax_and_scores():
    trt = fake_tensorrt()
    network = attention_network(trt)
    assert pin_fp32_islands(trt, network) == 4
    pinned = [(layer.type, layer.get_output(0).name) for layer in network.layers if layer.precision]
    assert pinned == [
        ("NORMALIZATION", "n"),
        ("MATRIX_MULTIPLY", "qk"),
        ("ELEMENTWISE", "s"),
        ("SOFTMAX", "p"),
    ]
    for layer in network.layers:
        assert layer.output_types == ({0: "float32"} if layer.precision else {})


def test_build_engine_strongly_typed(tmp_path, fake_logger):
    trt = fake_tensorrt("10.12.0.36")
    options = build_options(tmp_path)
    engine, info = build_engine(trt, tmp_path / "net.onnx", options, strongly_typed=True)
    calls = trt.calls
    assert engine == b"ENGINE" and info == {"precision_flag": None}
    assert calls.network_flags == 1 << 0 and calls.parsed == str(tmp_path / "net.onnx")
    assert calls.flags == set() and calls.cleared == set()  # types come from the graph
    assert calls.profiles == [("images", (1, 128, 128, 3), (4, 128, 128, 3), (4, 128, 128, 3))]
    assert calls.pools == {"WORKSPACE": 2 * 2**30}
    assert calls.config.builder_optimization_level == 2
    assert all(layer.precision is None for layer in calls.network.layers)
    # a missing timing cache starts empty and is saved after the build
    assert calls.cache_in == b""
    assert (tmp_path / "cache" / "timing.cache").read_bytes() == b"+timings"


def test_build_engine_weakly_typed_flags_and_islands(tmp_path, fake_logger):
    trt = fake_tensorrt("10.8.0.43")
    cache = tmp_path / "cache" / "timing.cache"
    cache.parent.mkdir()
    cache.write_bytes(b"old")
    options = build_options(tmp_path, batch_range=(2, 2), workspace_gib=None)
    engine, info = build_engine(trt, tmp_path / "net.onnx", options, strongly_typed=False)
    calls = trt.calls
    assert calls.network_flags == 0
    assert calls.flags == {"FP16", "PREFER"}
    assert info == {"precision_flag": "FP16", "fp32_layers": 4}
    assert calls.profiles == [] and calls.pools == {}  # static batch; no workspace limit
    assert [t.dtype for t in calls.network.outputs] == ["float16"]
    assert calls.cache_in == b"old" and cache.read_bytes() == b"old+timings"


@pytest.mark.parametrize("strongly_typed", [True, False])
def test_build_engine_fp32_and_bf16(tmp_path, fake_logger, strongly_typed):
    trt = fake_tensorrt()
    build_engine(trt, tmp_path / "n.onnx", build_options(tmp_path, precision="fp32"),
                 strongly_typed)  # fmt: skip
    assert trt.calls.cleared == {"TF32"} and trt.calls.flags == set()
    trt = fake_tensorrt()
    build_engine(trt, tmp_path / "n.onnx", build_options(tmp_path, precision="bf16"),
                 strongly_typed)  # fmt: skip
    assert trt.calls.flags == (set() if strongly_typed else {"BF16", "PREFER"})


def test_build_engine_errors_are_one_line(tmp_path, fake_logger):
    options = build_options(tmp_path, timing_cache=None)
    with pytest.raises(TensorRTBuildError) as err:
        build_engine(fake_tensorrt(parse_ok=False), tmp_path / "n.onnx", options, True)
    assert str(err.value) == (
        "TensorRT 10.12.0.36 cannot parse the ONNX graph (2 error(s)); first: node "
        "/unet/FancyOp_3 FancyOp: No importer registered for op: FancyOp"
    )
    assert isinstance(err.value, RuntimeError) and isinstance(err.value, CleanDIFTError)
    with pytest.raises(TensorRTBuildError, match="^TensorRT engine build failed: out of memory"):
        build_engine(fake_tensorrt(build_ok=False), tmp_path / "n.onnx", options, True)


# ---------------------------------------------------------------- real engines (GPU + TensorRT)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    """tiny at 128², fp16, dynamic batch 1..4: (path, meta)."""
    from export import ExportOptions, export_model

    out = tmp_path_factory.mktemp("trt")
    options = ExportOptions(model="tiny", taps=TAPS, height=128, width=128, batch=1, max_batch=4,
                            precision="fp16", format="engine", out=str(out), device="cuda",
                            timing_cache=str(out / "timing.cache"))  # fmt: skip
    return export_model(options, log=lambda _: None)


@pytest.fixture(scope="module")
def photos():
    from export.validate import validation_images

    return validation_images(128, 128, count=3)


@pytest.fixture(scope="module")
def reference(photos):
    """PyTorch fp32 taps of the three photos."""
    from cleandift_rt.models import load_model

    net = load_model("tiny").to("cuda", torch.float32).feature_net(TAPS)
    with torch.inference_mode():
        return dict(zip(net.taps, net(torch.from_numpy(photos).cuda())))


@pytest.fixture(scope="module")
def runner(engine):
    from cleandift_rt.runtime import load_runner

    return load_runner(engine[0], "cuda")


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = torch.nn.functional.cosine_similarity(a.float().flatten(1), b.float().flatten(1), dim=1)
    return float(cos.min())


@pytest.mark.tensorrt
@requires_trt
class TestEngine:
    @pytest.mark.parametrize("batch", [1, 3])
    def test_matches_pytorch_fp32(self, runner, photos, reference, batch):
        outs = runner(photos[:batch])
        assert set(outs) == set(TAPS)
        for tap in TAPS:
            out, ref = outs[tap], reference[tap][:batch]
            assert out.is_cuda and out.dtype == torch.float16 and out.shape == ref.shape
            assert torch.isfinite(out).all()
            assert _min_cosine(out, ref) >= 0.999, tap

    def test_sidecar_records_build(self, engine):
        import tensorrt

        path, meta = engine
        assert path.suffix == ".engine" and path.is_file()
        assert not list(path.parent.glob("*.onnx"))  # the intermediate graph is gone
        assert meta.producer["tensorrt"] == tensorrt.__version__
        name, cc = torch.cuda.get_device_name(), "{}.{}".format(*torch.cuda.get_device_capability())
        assert meta.target == {"gpu": name, "compute_capability": cc}
        assert meta.build["strongly_typed"] == uses_strongly_typed(tensorrt.__version__)
        assert meta.build["opt_level"] == 3 and meta.build["timing_cache"]
        assert (path.parent / "timing.cache").stat().st_size > 0

    def test_batch_outside_profile(self, runner, photos):
        five = np.concatenate([photos, photos[:2]])
        with pytest.raises(InputSizeError, match=r"1\.\.4; rebuild: cleandift-rt export"):
            runner(five)

    def test_other_tensorrt_version_is_refused(self, engine, tmp_path):
        from cleandift_rt.runtime import load_runtime

        path = self._copy(engine[0], tmp_path)
        sidecar = path.with_name(path.name + ".json")
        data = json.loads(sidecar.read_text())
        data["producer"]["tensorrt"] = "9.9.9"
        sidecar.write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match="rebuild") as err:
            load_runtime(path, device="cuda")
        assert "engine built with TensorRT 9.9.9" in str(err.value)
        assert "\n" not in str(err.value)

    def test_truncated_engine_is_refused(self, engine, tmp_path):
        from cleandift_rt.runtime import load_runtime

        path = self._copy(engine[0], tmp_path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ArtifactError, match="cannot deserialise") as err:
            load_runtime(path, device="cuda")
        assert "\n" not in str(err.value)

    def test_two_streams_agree_with_sequential(self, runner, photos):
        inputs = [photos[:1], photos[1:3]]
        sequential = [runner(x) for x in inputs]
        results: list = [None, None]
        errors: list = []

        def work(i):
            try:
                stream = torch.cuda.Stream()
                with torch.cuda.stream(stream):
                    for _ in range(3):
                        out = runner(inputs[i])
                    stream.synchronize()
                results[i] = out
            except Exception as exc:  # surfaced below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        for seq, par in zip(sequential, results):
            for tap in TAPS:
                torch.testing.assert_close(par[tap], seq[tap], rtol=1e-3, atol=1e-3)
        assert len({key[0] for key in runner._slots}) >= 3  # default stream + two side streams

    def test_cuda_graph_and_reused_outputs(self, engine, runner, photos):
        path, meta = engine
        graphed = TensorRTRunner(path, meta, torch.device("cuda"), cuda_graph=True,
                                 reuse_outputs=True)  # fmt: skip
        expected = runner(photos[:2])
        first = {t: v.clone() for t, v in graphed(photos[:2]).items()}  # warm-up + capture
        second = graphed(photos[:2])  # replay
        for tap in TAPS:
            torch.testing.assert_close(first[tap], expected[tap], rtol=1e-3, atol=1e-3)
            torch.testing.assert_close(second[tap], expected[tap], rtol=1e-3, atol=1e-3)
        assert graphed(photos[:2])[TAPS[0]].data_ptr() == second[TAPS[0]].data_ptr()

    @staticmethod
    def _copy(path, directory):
        target = directory / path.name
        shutil.copy(path, target)
        shutil.copy(path.with_name(path.name + ".json"), target.with_name(target.name + ".json"))
        return target
