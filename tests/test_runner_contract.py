"""One runner contract, parametrised over every backend in the registry (CPU; engines need
TensorRT and a GPU and are skipped with the reason otherwise), plus the registry's own rules.

Every runner: uint8 (B, H, W, 3) numpy or torch in, {tap: (B, C, H/stride, W/stride)} out in
the registered tap order, the PyTorch fp32 features within 1e-4, its batch range in the
interface (FeatureExtractor pads under it), and one-line InputSizeErrors for bad batches.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from cleandift_rt.backends import Runner, TorchRunner, registry
from cleandift_rt.errors import InputSizeError
from cleandift_rt.extractor import FeatureExtractor
from cleandift_rt.imaging import prepare_image
from cleandift_rt.models import load_model
from cleandift_rt.runtime import load_runner

TAPS = ("us6", "mid")
SIZE = (64, 64)


def photos(count: int) -> np.ndarray:
    from skimage import data

    sources = [data.astronaut(), data.chelsea(), data.coffee()]
    return np.stack([prepare_image(sources[i % 3], SIZE).array for i in range(count)])


@pytest.fixture(scope="module")
def reference_net():
    return load_model("tiny").feature_net(list(TAPS)).eval()


def _skip_reason(spec: registry.BackendSpec) -> str | None:
    missing = [p for p in spec.packages if importlib.util.find_spec(p) is None]
    if missing:
        return f"{spec.name} needs {', '.join(missing)} ({spec.install_hint()})"
    if "cpu" not in spec.devices and not torch.cuda.is_available():
        return f"{spec.name} runs on {'/'.join(spec.devices)} only and no GPU is here"
    return None


@pytest.fixture(scope="module", params=registry.names())
def runner(request, reference_net, tmp_path_factory):
    """A runner of every registered backend over tiny us6+mid, 64x64, fp32."""
    spec = registry.get(request.param)
    reason = _skip_reason(spec)
    if reason:
        pytest.skip(reason)
    device = "cpu" if "cpu" in spec.devices else "cuda"
    if not spec.exportable:
        return spec.runner_class()(reference_net, SIZE)
    if spec.name == "aoti":  # the suite's one AOTInductor compile (conftest)
        path = request.getfixturevalue("aoti_artifact")[0]
    else:
        from export import ExportOptions, export_model

        options = ExportOptions(model="tiny", taps=TAPS, height=SIZE[0], width=SIZE[1], batch=1,
                                max_batch=4, precision="fp32", format=spec.name,
                                out=str(tmp_path_factory.mktemp(spec.name)), device=device,
                                validate=False)  # fmt: skip
        path = export_model(options, log=lambda _: None)[0]
    return load_runner(path, device)


def test_runner_describes_itself(runner):
    assert isinstance(runner, Runner)
    assert registry.get(runner.name).name in registry.names()
    assert runner.taps == TAPS
    assert runner.strides == {"us6": 16, "mid": 64} and runner.channels["us6"] == 64
    lo, hi = runner.batch_range
    assert 1 <= lo <= hi


@pytest.mark.parametrize("batch", [1, 3])
def test_outputs_equal_pytorch_fp32(runner, reference_net, batch):
    images = photos(batch)
    with torch.inference_mode():
        ref = dict(zip(TAPS, reference_net(torch.from_numpy(images))))
    out = runner(images)
    assert tuple(out) == TAPS
    for tap in TAPS:
        s = runner.strides[tap]
        assert tuple(out[tap].shape) == (batch, runner.channels[tap], SIZE[0] // s, SIZE[1] // s)
        assert out[tap].dtype == runner.dtype == torch.float32, tap  # fp32 artifacts and models
        assert out[tap].device.type == torch.device(runner.device).type, tap
        got = out[tap].float().cpu()
        assert float((got - ref[tap]).abs().max() / ref[tap].abs().max()) < 1e-4, tap


def test_numpy_and_torch_inputs_agree(runner):
    images = photos(2)
    a, b = runner(images), runner(torch.from_numpy(images))
    for tap in TAPS:
        torch.testing.assert_close(a[tap], b[tap], rtol=0, atol=0)


def test_bad_batches_are_one_line_input_errors(runner):
    for bad in (
        np.zeros((1, 64, 64, 3), np.float32),  # not uint8
        np.zeros((1, 64, 64), np.uint8),  # no channel axis
        np.zeros((1, 128, 96, 3), np.uint8),  # not the runner's input size
    ):
        with pytest.raises(InputSizeError) as info:
            runner(bad)
        assert "\n" not in str(info.value)
    if runner.batch_range[1] < 2**31 - 1:  # an artifact: its exported range is enforced
        with pytest.raises(InputSizeError, match="rebuild: cleandift-rt export"):
            runner(photos(runner.batch_range[1] + 1))


def test_extractor_batches_through_the_range(runner, reference_net):
    """5 images, batch_size 2: chunks within the range, results in order, as PyTorch."""
    fx = FeatureExtractor(runner, resolution=SIZE)
    images = photos(5)
    feats = fx.extract_prepared(images, batch_size=2)
    with torch.inference_mode():
        ref = reference_net(torch.from_numpy(images))[0]
    assert feats["us6"].shape[0] == 5 and len(feats) == 5
    torch.testing.assert_close(feats["us6"].float().cpu(), ref, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------ registry rules


def test_names_and_aliases_resolve_to_one_entry():
    assert {registry.get(n).name for n in ("trt", "tensorrt", "engine", "TRT")} == {"engine"}
    assert registry.get("onnxruntime").name == "onnx" and registry.get("pt2").name == "aoti"
    assert registry.names(exportable=True) == ("onnx", "engine", "aoti")
    assert all(s.suffix for s in registry.BACKENDS if s.exportable)
    assert registry.from_suffix("a/b.ENGINE").name == "engine"


@pytest.mark.parametrize(
    "name,hint", [("onx", "did you mean 'onnx'"), ("tensort", "did you mean 'tensorrt'")]
)
def test_unknown_name_suggests_the_nearest(name, hint):
    with pytest.raises(registry.BackendError, match=hint) as info:
        registry.get(name)
    assert "\n" not in str(info.value)
    with pytest.raises(registry.BackendError, match="unknown format 'torch'"):
        registry.get("torch", exportable=True)  # runs in-process: nothing to export


def test_option_that_does_not_apply_is_refused_before_any_work(tmp_path):
    from export import ExportError, ExportOptions, export_model

    for fmt, changes, flag in (("onnx", {"workspace_gib": 2.0}, "--workspace"),
                               ("aoti", {"opset": 18}, "--opset"),
                               ("onnx", {"timing_cache": "t.cache"}, "--timing-cache"),
                               ("aoti", {"opt_level": 2}, "--opt-level")):  # fmt: skip
        options = ExportOptions(model="tiny", format=fmt, out=str(tmp_path / "o"), **changes)
        with pytest.raises(ExportError, match=f"{flag} does not apply to the {fmt} backend"):
            export_model(options, log=lambda _: None)
    assert not (tmp_path / "o").exists()
    options = ExportOptions(model="tiny", format="trt", workspace_gib=2.0)
    options.check()  # an alias of engine, which takes it
    assert options.format == "engine" and options.opset == 17 and options.opt_level == 3


def test_runtime_option_that_does_not_apply_is_refused(aoti_artifact):
    with pytest.raises(registry.BackendError, match="--provider does not apply to the aoti"):
        load_runner(aoti_artifact[0], "cpu", provider="cuda")


def test_cli_export_lists_aliases_and_refuses_foreign_options(tmp_path, capsys):
    from cleandift_rt.cli import main

    with pytest.raises(SystemExit) as code:
        main(["export", "--format", "onnx", "--workspace", "2", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code.value.code == 2 and err == [
        "error: --workspace does not apply to the onnx backend (only to engine)"
    ]
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as code:
        main(["export", "--format", "tflite"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and "trt" in err and "tensorrt" in err and "aoti" in err


def test_torch_backend_is_the_registered_runner():
    assert registry.get("torch").runner_class() is TorchRunner


def test_top_level_load_runtime():
    from cleandift_rt import load_runtime
    from cleandift_rt.runtime import load_runtime as direct

    assert load_runtime is direct
