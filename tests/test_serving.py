"""The feature service on a real local Ray Serve (cleandift_rt/serving/), CPU only, offline.

One Ray + Serve per module (about 20-40 s to start on a small CPU machine), serving ``tiny`` at
64 px with taps us6 and us3; every answer is compared with a local FeatureExtractor on the same
model, taps and resolution. ``tiny`` has random weights: the tests check that the service
computes exactly what the library computes, batches concurrent requests, and refuses bad input
cleanly, never that its matches are right.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.serve", reason="needs the serve extra (ray[serve])")

from cleandift_rt import FeatureExtractor, cli  # noqa: E402
from cleandift_rt.serving import Client, ServeConfig, ServingError, start_server  # noqa: E402
from cleandift_rt.serving.config import free_port  # noqa: E402

TAPS = ("us6", "us3")
RES = 64
MAX_BODY_MB = 1.0


@pytest.fixture(scope="module")
def server():
    """A running service (tiny, 64 px, batches of up to 8 images, 50 ms to fill one)."""
    import ray
    from ray import serve

    config = ServeConfig(model="tiny", taps=",".join(TAPS), resolution=RES, port=free_port(),
                         max_batch=8, batch_wait_ms=50, max_body_mb=MAX_BODY_MB)  # fmt: skip
    running = start_server(config)
    try:
        yield running
    finally:
        try:
            running.stop()
        finally:
            if ray.is_initialized():
                serve.shutdown()
                ray.shutdown()


@pytest.fixture(scope="module")
def local():
    return FeatureExtractor.from_pretrained("tiny", taps=TAPS, resolution=RES)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The local reference on one thread, as each replica runs (Ray gives a 1-CPU replica one
    OpenMP thread): on a small shared CPU machine, OpenMP threads competing with the replica's
    make a 64 px extraction 30x slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def photos():
    """Eight non-square uint8 RGB images (sizes differ, so coordinates are really mapped)."""
    rng = np.random.default_rng(0)
    sizes = [(48, 80), (96, 64), (64, 64), (50, 70), (120, 90), (33, 47), (80, 48), (70, 100)]
    return [rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for hw in sizes]


def png_b64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def post(url: str, body: bytes, path: str = "/v1/match") -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def request_points(rng, image: np.ndarray, k: int = 4) -> list[list[float]]:
    h, w = image.shape[:2]
    return [[float(rng.uniform(0, w - 1)), float(rng.uniform(0, h - 1))] for _ in range(k)]


def assert_same_match(got, want, context: str = "") -> None:
    """Same target pixels and scores as the local extractor. The server runs batches of other
    sizes (and other thread counts), so scores agree to rounding (1e-4); a target may then
    differ only as a tie: a neighbouring pixel whose score equals the local best to 1e-4."""
    np.testing.assert_allclose(got.source_points, want.source_points, err_msg=context)
    np.testing.assert_allclose(got.scores, want.scores, atol=1e-4, err_msg=context)
    moved = np.abs(got.target_points - want.target_points).max(axis=1)
    assert np.all(moved <= 1), f"{context}: targets differ by more than a tie: {moved}"
    assert np.mean(moved == 0) >= 0.95, f"{context}: too many tie flips: {moved}"


def test_health_and_info(server, local):
    client = Client(server.url)
    assert client.health()
    info = client.info()
    assert info["api"] == "v1"
    assert info["model"] == "tiny"
    assert info["taps"] == list(TAPS)
    assert info["channels"] == {t: local.runner.channels[t] for t in TAPS}
    assert info["strides"] == {t: local.strides[t] for t in TAPS}
    assert info["input_size"] == [RES, RES]
    assert info["backend"] == "torch" and info["device"] == "cpu"
    assert info["torch_threads"] == 1  # a 1-CPU replica: Ray sets OMP_NUM_THREADS=1
    assert info["batching"]["max_batch"] == 8 and info["batching"]["batch_wait_ms"] == 50
    assert info["max_body_mb"] == MAX_BODY_MB
    assert {"cleandift_rt", "torch", "ray"} <= set(info["versions"])


def test_concurrent_matches_batch_and_equal_the_local_extractor(server, local, photos):
    """64 /v1/match requests from 8 threads, a corrupt image in the middle of the load: 64
    answers equal to FeatureExtractor.match, one clean 400, batches of more than one image."""
    rng = np.random.default_rng(1)
    jobs = []
    for i in range(64):
        a, b = rng.choice(len(photos), 2, replace=False)
        pts = request_points(rng, photos[a])
        tap = TAPS[i % 2]
        jobs.append((a, b, pts, tap))
    expected = [local.match(photos[a], photos[b], pts, tap=tap) for a, b, pts, tap in jobs]
    encoded = [png_b64(p) for p in photos]
    results: dict[int, tuple[int, dict]] = {}
    corrupt: list[tuple[int, dict]] = []
    served_after_corrupt = threading.Event()

    def worker(thread: int) -> None:
        for i in range(thread, 64, 8):
            a, b, pts, tap = jobs[i]
            body = {"source": encoded[a], "target": encoded[b], "points": pts, "tap": tap}
            results[i] = post(server.url, json.dumps(body).encode())
            if thread == 3 and i == 3 + 8 * 3:  # the middle of this thread's share
                broken = encoded[a][: len(encoded[a]) // 2]  # a truncated PNG, valid base64
                broken = broken[: len(broken) - len(broken) % 4]
                corrupt.append(post(server.url, json.dumps({**body, "source": broken}).encode()))
            elif corrupt:
                served_after_corrupt.set()

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert len(corrupt) == 1
    status, body = corrupt[0]
    assert status == 400 and set(body) == {"error"} and "\n" not in body["error"]
    assert "source" in body["error"]
    assert served_after_corrupt.is_set()
    assert sorted(results) == list(range(64))
    from cleandift_rt.serving.protocol import match_result_from_json

    sizes = []
    for i, (status, reply) in sorted(results.items()):
        assert status == 200, reply
        got, lost = match_result_from_json(reply)
        assert got.tap == jobs[i][3] and not lost.any()
        assert_same_match(got, expected[i], f"request {i}")
        assert set(reply["timing_ms"]) == {"decode", "extract", "match", "total"}
        sizes.append(reply["batch_size"])
    stats = Client(server.url).stats()
    batches = {int(k): v for k, v in stats["batches"].items()}
    # a match sends 2 images: a pass of more than 2 holds images of several requests
    assert max(batches) > 2, f"no forward pass shared by two requests: {batches}"
    assert max(sizes) > 2
    assert max(batches) <= 8
    assert stats["requests"].get("/v1/match 400", 0) >= 1
    assert Client(server.url).health()


def test_extract_round_trip_equals_local_features(server, local, photos):
    client = Client(server.url)
    image = photos[4]
    got = client.extract(image)
    want = local(image)
    assert list(got.maps) == list(TAPS)
    assert got.strides == want.strides
    assert got.transforms == want.transforms
    for tap in TAPS:
        assert got[tap].shape == want[tap].shape
        np.testing.assert_allclose(got[tap].numpy(), want[tap].numpy(), atol=1e-4, rtol=1e-4)
    only = client.extract(image, taps=["us3"])
    assert list(only.maps) == ["us3"]


def test_client_takes_the_extractors_inputs(server, local, photos, tmp_path):
    """Paths, PIL images and arrays; mutual=True adds cycle flags, same targets."""
    client = Client(server.url)
    path = tmp_path / "source.png"
    Image.fromarray(photos[0]).save(path)
    pts = [[5.0, 7.0], [40.5, 20.0], [79.0, 47.0]]
    want = local.match(str(path), photos[1], pts)
    assert_same_match(client.match(str(path), Image.fromarray(photos[1]), pts), want, "path")
    mutual = client.match(photos[0], photos[1], pts, mutual=True)
    assert_same_match(mutual, want, "mutual")
    lost = [m["lost"] for m in client.last_reply["matches"]]
    assert all(isinstance(flag, bool) for flag in lost)


BAD_REQUESTS = {
    # name: (path, body builder, status, word in the error)
    "not-json": ("/v1/match", lambda ok: b"{not json", 400, "JSON"),
    "not-an-object": ("/v1/match", lambda ok: b"[1, 2]", 400, "object"),
    "bad-base64": ("/v1/match", lambda ok: {**ok, "source": "%%%"}, 400, "base64"),
    "not-an-image": (
        "/v1/match",
        lambda ok: {**ok, "target": base64.b64encode(b"hello " * 9).decode()},
        400,
        "target",
    ),  # fmt: skip
    "point-outside": (
        "/v1/match",
        lambda ok: {**ok, "points": [[1, 2], [500, 3]]},
        422,
        "outside",
    ),  # fmt: skip
    "point-malformed": ("/v1/match", lambda ok: {**ok, "points": [[1, "a"]]}, 422, "points[0]"),
    "points-missing": (
        "/v1/match",
        lambda ok: {k: v for k, v in ok.items() if k != "points"},
        422,
        "points",
    ),  # fmt: skip
    "unknown-tap": ("/v1/match", lambda ok: {**ok, "tap": "us99"}, 422, "us99"),
    "mutual-not-bool": ("/v1/match", lambda ok: {**ok, "mutual": "yes"}, 422, "mutual"),
    "extract-unknown-tap": (
        "/v1/extract",
        lambda ok: {"image": ok["source"], "taps": ["mid"]},
        422,
        "mid",
    ),  # fmt: skip
    "body-too-large": (
        "/v1/match",
        lambda ok: {**ok, "pad": "x" * int(1.5 * 2**20)},
        413,
        "max-body-mb",
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_requests_get_one_line_errors(server, photos, case):
    path, build, status, word = BAD_REQUESTS[case]
    ok = {"source": png_b64(photos[0]), "target": png_b64(photos[1]), "points": [[3, 4]]}
    body = build(ok)
    got_status, reply = post(server.url, body if isinstance(body, bytes) else
                             json.dumps(body).encode(), path)  # fmt: skip
    assert got_status == status, reply
    assert set(reply) == {"error"} and "\n" not in reply["error"]
    assert word in reply["error"]
    assert post(server.url, json.dumps(ok).encode())[0] == 200  # and the server keeps serving


def test_routes_and_methods(server):
    for method, path, status in [("GET", "/v1/match", 405), ("POST", "/v1/info", 405),
                                 ("GET", "/v2/match", 404)]:  # fmt: skip
        request = urllib.request.Request(server.url + path, method=method,
                                         data=b"{}" if method == "POST" else None)  # fmt: skip
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == status
        assert set(json.loads(caught.value.read())) == {"error"}


def test_a_model_that_cannot_load_fails_start_in_one_line(server, tmp_path):
    """A replica whose weights do not load: ServingError with the loader's one line (this
    deploys a second application on the module's Ray; the first keeps serving)."""
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 64)
    config = ServeConfig(model=str(broken), base="tiny", port=server.config.port,
                         app_name="broken", route_prefix="/broken")  # fmt: skip
    config.check_model()  # the file exists: only loading it can tell
    with pytest.raises(ServingError) as caught:
        start_server(config, check=False)  # (the port is the running server's)
    message = str(caught.value)
    assert "\n" not in message and "broken.safetensors" in message
    assert Client(server.url).health()


@pytest.mark.parametrize(
    "args, word",
    [
        (["--model", "nope"], "unknown model 'nope'"),
        (["--port", "0"], "--port"),
        (["--replicas", "0"], "--replicas"),
        (["--max-batch", "0"], "--max-batch"),
        (["--max-body-mb", "0"], "--max-body-mb"),
        (["--artifact", "missing.onnx"], "missing.onnx"),
        (["--artifact", "a.onnx", "--model", "tiny"], "one of --model and --artifact"),
        (["--model", "tiny", "--taps", ""], "--taps"),
        (
            ["--model", "tiny", "--taps", "us6,us9", "--fuse", "concat", "--tap-weights", "1"],
            "one per tap",
        ),
        (["--model", "tiny", "--fuse", "concat"], "two or more taps"),
        (["--model", "tiny+dinov3"], "unknown DINOv2"),
        (["--model", "tiny+dinov2-tiny", "--fusion-alpha", "2"], "[0, 1]"),
    ],
)
def test_serve_command_refuses_bad_options_before_ray(args, word, capsys):
    """Exit 2 and one error line, found before Ray starts or a model loads (no server)."""
    with pytest.raises(SystemExit) as caught:
        cli.main(["serve", *args])
    out, err = capsys.readouterr()
    assert caught.value.code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], err
