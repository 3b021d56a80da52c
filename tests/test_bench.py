"""`cleandift-rt bench`: FLOP accounting against DIFT, the report's schema and internal
consistency, the CLI on the tiny model, and bad input. Timings are not checked (shared CPUs)."""

from __future__ import annotations

import json

import cv2
import pytest

from cleandift_rt import cli
from cleandift_rt.bench import SCHEMA, BenchSettings, count_flops, model_flops, run_bench


@pytest.mark.parametrize("taps,res", [(("us6",), 64), (("us9", "mid"), 128)])
def test_dift_flops_are_ensemble_times_cleandift(tiny, taps, res):
    """DIFT encodes every copy (as the reference does): N × (VAE + truncated U-Net)."""
    f = model_flops(tiny, taps, res, 261, 8)
    assert f["cleandift"] > 0
    assert f["ratio"] == pytest.approx(8, rel=1e-12)


def test_meta_flop_count_equals_a_real_forward_with_attention_as_matmuls(tiny):
    """The meta-device count equals a real forward's when attention runs as its two matmuls
    (the fused CPU attention kernel is not counted by flop_counter at all)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = tiny.feature_net(["us6"])
    image = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    with sdpa_kernel(SDPBackend.MATH):
        real = count_flops(lambda: net(image))
    assert model_flops(tiny, ("us6",), 64, 261, 8)["cleandift"] == real


@pytest.fixture(scope="module")
def report():
    settings = BenchSettings(
        model="tiny",
        taps=("us6",),
        resolutions=(64,),
        batches=(1, 2),
        backends=("torch-fp32",),
        device="cpu",
        warmup=1,
        reps=2,
        min_time=0.0,
        dift_ensemble=2,
        matcher_points=16,
        peak_seconds=0.2,
    )
    return run_bench(settings).to_dict()


def test_report_schema_and_consistency(report):
    assert report["schema"] == SCHEMA and report["device"] == "cpu"
    assert {"python", "torch", "cpu"} <= set(report["machine"])
    peak = report["hardware"]["matmul_fp32"]["tflops"]
    assert peak > 0 and report["hardware"]["copy"]["gb_per_s"] > 0
    assert set(report["flops"]) == {"64"}
    for f in report["flops"].values():
        assert f["ratio"] == pytest.approx(2) and f["dift"] == pytest.approx(2 * f["cleandift"])
    assert len(report["rows"]) == 2 and len(report["dift"]) == 1
    dift_ms = {d["resolution"]: d["ms_per_image"] for d in report["dift"]}
    for row in report["dift"] + report["rows"]:
        assert 0 < row["median_ms"] <= row["p90_ms"] and row["runs"] >= 2
        assert row["ms_per_image"] == pytest.approx(row["median_ms"] / row["batch"])
        assert row["images_per_s"] == pytest.approx(1e3 / row["ms_per_image"])
        # GFLOP per ms = TFLOP/s
        assert row["achieved_tflops"] == pytest.approx(row["gflop_per_image"] / row["ms_per_image"])
        assert 0 < row["mfu"] <= 1
        assert row["mfu"] == pytest.approx(row["achieved_tflops"] / peak)
        assert row["peak_memory_mib"] > 0
    for row in report["rows"]:
        f = report["flops"][str(row["resolution"])]
        assert row["gflop_per_image"] == pytest.approx(f["cleandift"] / 1e9)
        assert row["speedup_vs_dift"] == pytest.approx(
            dift_ms[row["resolution"]] / row["ms_per_image"]
        )
    (matcher,) = report["matcher"]
    assert matcher["resolution"] == 64 and matcher["map"] == [4, 4] and matcher["median_ms"] > 0
    json.dumps(report)  # serialisable as is


def call_main(args: list, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return (info.value.code or 0), out, err


def test_cli_bench_tiny_writes_json_and_plot(tmp_path, capsys):
    out, plot = tmp_path / "bench.json", tmp_path / "bench.png"
    args = [
        "bench",
        "--model",
        "tiny",
        "--resolutions",
        "64",
        "--batches",
        "1",
        "--device",
        "cpu",
        "--reps",
        "1",
        "--min-time",
        "0",
        "--warmup",
        "0",
        "--dift-ensemble",
        "2",
        "--matcher-points",
        "8",
        "--peak-seconds",
        "0.1",
        "--out",
        out,
        "--plot",
        plot,
        "--json",
    ]
    code, stdout, err = call_main(args, capsys)
    assert code == 0, err
    payload = json.loads(stdout)
    assert payload["schema"] == SCHEMA and payload["command"].startswith("cleandift-rt bench")
    assert json.loads(out.read_text())["rows"] == payload["rows"]
    image = cv2.imread(str(plot))
    assert image is not None and image.shape[2] == 3 and image.std() > 0


@pytest.mark.parametrize(
    "args",
    [
        ["--resolutions", "100"],
        ["--resolutions", "64,x"],
        ["--batches", "0"],
        ["--backends", "torch-int8"],
        ["--backends", "tensorflow"],
        ["--taps", "us99", "--resolutions", "64"],
        ["--model", "random:sd3"],
        ["--out", "{tmp}/report.txt"],
        ["--plot", "{tmp}/plot.jpg"],
        ["--device", "cuda:7"] if not __import__("torch").cuda.is_available() else ["--reps", "0"],
    ],
)
def test_cli_bench_bad_input_exits_2_with_one_line(args, tmp_path, capsys):
    args = ["bench", "--min-time", "0", "--reps", "1", "--no-dift", "--no-matcher"] + [
        a.format(tmp=tmp_path) for a in args
    ]
    code, out, err = call_main(args, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert out == "" and list(tmp_path.iterdir()) == []


def test_recorded_command_names_every_option_off_its_default():
    from cleandift_rt.cli import bench, command_line

    ctx = bench.make_context("cleandift-rt bench", ["--resolutions", "64,128", "--no-dift"])
    assert command_line(ctx) == "cleandift-rt bench --resolutions 64,128 --no-dift"
    ctx = bench.make_context("cleandift-rt bench", ["--json", "--plot", "a b.png"])
    assert command_line(ctx) == "cleandift-rt bench --plot 'a b.png' --json"
