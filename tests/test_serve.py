"""Serving on a real Triton Inference Server (PyTriton).

Loopback only, ports chosen free by the test, request loops bounded in count and time. One deit_tiny ONNX export
per session; one server for most tests (started without LD_LIBRARY_PATH, so the pyenv libpython trap is covered).
"""
import io
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install tpdeploy[serve])")
pytest.importorskip("PIL", reason="needs Pillow")
psutil = pytest.importorskip("psutil", reason="needs psutil")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[all]")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[all]")

from PIL import Image  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tpdeploy import runtime  # noqa: E402
from tpdeploy import serve as sv  # noqa: E402
from tpdeploy.errors import TpdeployError  # noqa: E402
from tpdeploy.images import sample_images  # noqa: E402
from tpdeploy.preprocess import preprocess_image  # noqa: E402

NAME = "tp"
MAX_BATCH = 8
ATOL, RTOL = 1e-4, 1e-4
DEADLINE_S = 240.0  # no request loop runs longer than this


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def runner(tiny_onnx):
    return runtime.load(tiny_onnx)


@pytest.fixture(scope="module")
def server(tiny_onnx):
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    with sv.ServerProcess(tiny_onnx, name=NAME, max_batch=MAX_BATCH, max_queue_delay_us=2000, instances=1,
                          env=env) as s:
        s.descendants = psutil.Process(s.pid).children(recursive=True)
        yield s


def http(server):
    return httpclient.InferenceServerClient(server.http_address, connection_timeout=60, network_timeout=60)


def grpc(server):
    return grpcclient.InferenceServerClient(server.grpc_url)


def infer_images(client, module, x, dtype="FP32"):
    inp = module.InferInput("images", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    kwargs = {"client_timeout": 60} if module is grpcclient else {}
    return client.infer(NAME, [inp], outputs=[module.InferRequestedOutput("logits")], **kwargs).as_numpy("logits")


def classify(client, module, blobs):
    data = np.array([[b] for b in blobs], dtype=np.object_)
    inp = module.InferInput("image", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    kwargs = {"client_timeout": 60} if module is grpcclient else {}
    res = client.infer(f"{NAME}_classify", [inp], **kwargs)
    return res.as_numpy("classes"), res.as_numpy("scores")


def encoded(fmt, seed=0, size=(300, 260), mode="RGB"):
    """A structured test picture (not noise) encoded as JPEG or PNG."""
    x = sample_images(1, 256, seed=seed)[0].transpose(1, 2, 0)
    rgb = np.clip((x * np.array([0.229, 0.224, 0.225]) + np.array([0.485, 0.456, 0.406])) * 255, 0, 255)
    img = Image.fromarray(rgb.astype(np.uint8)).resize(size).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_top_classes_and_libpython_env(monkeypatch):
    logits = np.array([[0.0, 3.0, 1.0, 3.0, -1.0, 2.0, 0.5]], np.float32)
    classes, scores = sv.top_classes(logits, 5)
    assert classes.dtype == np.int64 and scores.dtype == np.float32
    assert classes.tolist() == [[1, 3, 5, 2, 6]]  # ties: lowest index first
    p = np.exp(logits[0] - logits.max())
    np.testing.assert_allclose(scores[0], (p / p.sum())[[1, 3, 5, 2, 6]], rtol=1e-6)
    libdir = sv.python_library_dir()
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere/else")
    with sv.python_library_on_ld_path():
        inside = os.environ["LD_LIBRARY_PATH"]
    assert os.environ["LD_LIBRARY_PATH"] == "/somewhere/else"
    if libdir:
        assert inside.split(os.pathsep)[:2] == [libdir, "/somewhere/else"]


# ---------------------------------------------------------------------------------------------- the server

def test_health_readiness_config_metrics(server):
    c = http(server)
    try:
        assert c.is_server_live() and c.is_server_ready()
        assert c.is_model_ready(NAME) and c.is_model_ready(f"{NAME}_classify")
        cfg = c.get_model_config(NAME)
        assert cfg["max_batch_size"] == MAX_BATCH
        assert cfg["dynamic_batching"]["max_queue_delay_microseconds"] == 2000
        assert cfg["input"][0]["name"] == "images" and cfg["input"][0]["data_type"] == "TYPE_FP32"
        assert cfg["input"][0]["dims"] == [3, 224, 224] and cfg["output"][0]["dims"] == [1000]
        ccfg = c.get_model_config(f"{NAME}_classify")
        assert ccfg["input"][0]["data_type"] == "TYPE_STRING" and "dynamic_batching" not in ccfg
        assert {o["name"]: o["data_type"] for o in ccfg["output"]} == {"classes": "TYPE_INT64", "scores": "TYPE_FP32"}
    finally:
        c.close()
    g = grpc(server)
    try:
        assert g.is_server_ready() and g.is_model_ready(NAME)
    finally:
        g.close()
    metrics = sv.read_metrics(server.metrics_url)
    assert ("nv_inference_count", NAME) in metrics and ("nv_inference_exec_count", NAME) in metrics


def test_http_and_grpc_equal_the_runtime(server, runner):
    x = sample_images(3, seed=11)
    want = runner.infer(x)
    c, g = http(server), grpc(server)
    try:
        got_http = infer_images(c, httpclient, x)
        got_grpc = infer_images(g, grpcclient, x)
        got_one = infer_images(c, httpclient, x[1:2])
    finally:
        c.close()
        g.close()
    assert got_http.shape == (3, 1000) and got_http.dtype == np.float32
    np.testing.assert_allclose(got_http, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(got_grpc, want, atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(got_one, runner.infer(x[1:2]), atol=ATOL, rtol=RTOL)


def test_classify_jpeg_and_png(server, runner):
    blobs = [encoded("JPEG", seed=3), encoded("PNG", seed=4, size=(200, 320))]
    pre = np.stack([preprocess_image(b, runner.data_config) for b in blobs])
    want_classes, want_scores = sv.top_classes(runner.infer(pre), 5)
    c, g = http(server), grpc(server)
    try:
        for client, module in ((c, httpclient), (g, grpcclient)):
            classes, scores = classify(client, module, blobs)
            assert classes.shape == (2, 5) and classes.dtype == np.int64
            assert scores.shape == (2, 5) and scores.dtype == np.float32
            assert np.all(scores.sum(axis=1) <= 1 + 1e-5) and np.all(scores > 0)
            assert np.all(np.diff(scores, axis=1) <= 0)  # best first
            np.testing.assert_array_equal(classes, want_classes)
            np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=1e-4)
        one_classes, _ = classify(c, httpclient, blobs[1:])  # one image per request works too
        np.testing.assert_array_equal(one_classes, want_classes[1:])
    finally:
        c.close()
        g.close()


def test_a_384_px_model_is_served_with_its_own_preprocessing(family_onnx):
    """vit_small_patch16_384: images [B, 3, 384, 384]; classify resizes to 384 (crop_pct 1) and normalises with
    mean = std = 0.5, as its file records, not DeiT's 224 px ImageNet preprocessing."""
    _, path, _ = family_onnx("vit_small_patch16_384")
    runner = runtime.load(path)
    blob = encoded("JPEG", seed=5, size=(480, 400))
    pre = preprocess_image(blob, runner.data_config)
    assert pre.shape == (3, 384, 384) and runner.data_config.mean == (0.5, 0.5, 0.5)
    want_classes, want_scores = sv.top_classes(runner.infer(pre[None]), 5)
    with sv.ServerProcess(path, name=NAME, max_batch=2) as server:
        c = http(server)
        try:
            classes, scores = classify(c, httpclient, [blob])
            logits = infer_images(c, httpclient, pre[None])
        finally:
            c.close()
    np.testing.assert_array_equal(classes, want_classes)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(logits, runner.infer(pre[None]), atol=ATOL, rtol=RTOL)


def _good_client(server, runner_outputs, images, n_requests, use_grpc, errors, wrong, deadline, done=None):
    module = grpcclient if use_grpc else httpclient
    client = grpc(server) if use_grpc else http(server)
    try:
        for i in range(n_requests):
            if time.monotonic() > deadline:
                errors.append("deadline passed")
                return
            k = i % len(images)
            try:
                got = infer_images(client, module, images[k:k + 1])
            except Exception as e:  # noqa: BLE001 - every failure is a test failure, counted
                errors.append(repr(e))
                continue
            if not np.allclose(got, runner_outputs[k:k + 1], atol=ATOL, rtol=RTOL):
                wrong.append(k)
    finally:
        client.close()
        if done is not None:
            done.set()


def test_8_concurrent_clients_x_50_requests(server, runner):
    images = sample_images(8, seed=5)
    expected = np.concatenate([runner.infer(images[k:k + 1]) for k in range(len(images))])
    before = sv.read_metrics(server.metrics_url)
    errors, wrong = [], []
    deadline = time.monotonic() + DEADLINE_S
    threads = [threading.Thread(target=_good_client, args=(server, expected, images, 50, i % 2 == 1, errors, wrong,
                                                           deadline)) for i in range(8)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 30)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads)
    after = sv.read_metrics(server.metrics_url)
    assert errors == [], errors[:5]
    assert wrong == []
    served = after[("nv_inference_request_success", NAME)] - before[("nv_inference_request_success", NAME)]
    assert served == 400
    mean_batch = sv.mean_batch_from_metrics(before, after, NAME)
    print(f"\n400 requests from 8 clients in {elapsed:.1f} s, mean dynamic batch {mean_batch:.2f}")
    assert mean_batch > 1.0  # 8 clients on a busy model: the dynamic batcher groups requests


def test_malformed_requests_get_errors_and_the_server_keeps_serving(server, runner):
    images = sample_images(4, seed=7)
    expected = np.concatenate([runner.infer(images[k:k + 1]) for k in range(len(images))])
    errors, wrong = [], []
    deadline = time.monotonic() + DEADLINE_S
    stop_flags = [threading.Event() for _ in range(4)]
    good = [threading.Thread(target=_good_client, args=(server, expected, images, 25, i % 2 == 1, errors, wrong,
                                                        deadline, stop_flags[i])) for i in range(4)]
    for t in good:
        t.start()
    c, g = http(server), grpc(server)
    bad_results = {}
    good_jpeg = encoded("JPEG", seed=9)
    try:
        for label, call in [
            ("wrong shape http", lambda: infer_images(c, httpclient, np.zeros((1, 3, 100, 100), np.float32))),
            ("wrong shape grpc", lambda: infer_images(g, grpcclient, np.zeros((1, 224, 224, 3), np.float32))),
            ("wrong dtype http", lambda: infer_images(c, httpclient, np.zeros((1, 3, 224, 224)), "FP64")),
            ("wrong dtype grpc", lambda: infer_images(g, grpcclient, np.zeros((1, 3, 224, 224), np.int32), "INT32")),
            ("batch too large",
             lambda: infer_images(c, httpclient, np.zeros((MAX_BATCH + 1, 3, 224, 224), np.float32))),
            ("garbage bytes http", lambda: classify(c, httpclient, [b"\x00\x01garbage" * 50])),
            ("garbage bytes grpc", lambda: classify(g, grpcclient, [os.urandom(2048)])),
            ("truncated jpeg", lambda: classify(c, httpclient, [good_jpeg[: len(good_jpeg) // 3]])),
            ("empty bytes", lambda: classify(g, grpcclient, [b""])),
            ("one bad image among good", lambda: classify(c, httpclient, [good_jpeg, b"nope"])),
        ]:
            try:
                call()
                bad_results[label] = None
            except InferenceServerException as e:
                bad_results[label] = str(e)
            # a good classify request right after each bad one still works
            classes, _ = classify(g, grpcclient, [good_jpeg])
            assert classes.shape == (1, 5)
    finally:
        c.close()
        g.close()
        for t in good:
            t.join(DEADLINE_S + 30)
    assert all(msg is not None for msg in bad_results.values()), [k for k, v in bad_results.items() if v is None]
    assert "shape" in bad_results["wrong shape http"] and "shape" in bad_results["wrong shape grpc"]
    assert "FP64" in bad_results["wrong dtype http"] and "INT32" in bad_results["wrong dtype grpc"]
    assert "batch" in bad_results["batch too large"]
    for label in ("garbage bytes http", "garbage bytes grpc", "truncated jpeg", "one bad image among good"):
        assert "cannot decode" in bad_results[label], bad_results[label]
    assert "empty image" in bad_results["empty bytes"]
    assert errors == [], errors[:5]
    assert wrong == []
    c = http(server)
    try:
        assert c.is_server_ready() and c.is_model_ready(NAME)
        np.testing.assert_allclose(infer_images(c, httpclient, images[:2]), runner.infer(images[:2]),
                                   atol=ATOL, rtol=RTOL)
    finally:
        c.close()


def test_port_in_use_is_a_clear_error(tiny_onnx):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        service = sv.TritonService(tiny_onnx, http_port=busy, grpc_port=sv.free_port(), metrics_port=None)
        with pytest.raises(TpdeployError, match=f"127.0.0.1:{busy}"):
            service.start()


def _assert_stops_cleanly(server, procs, sig):
    """`sig` stops the server with exit 0, nothing force-killed, every child process gone."""
    rc = server.stop(sig)
    log = server.log()
    assert rc == 0, log[-2000:]
    assert server.killed == []
    assert not [p.pid for p in procs if _alive(p)]
    assert f"{sig.name} received" in log and "stopped." in log


def test_sigint_stops_the_server_and_leaves_no_process(tiny_onnx):
    with sv.ServerProcess(tiny_onnx, name="tp2", max_batch=4) as s:
        procs = psutil.Process(s.pid).children(recursive=True)
        names = {p.name() for p in procs}
        assert "tritonserver" in names and "triton_python_backend_stub" in names
        _assert_stops_cleanly(s, procs, signal.SIGINT)


def test_sigterm_stops_the_server_and_leaves_no_process(server):
    """Last of the server tests (it stops the module's server)."""
    procs = server.descendants
    assert any(p.name() == "tritonserver" for p in procs)
    assert sum(p.name() == "triton_python_backend_stub" for p in procs) == 2  # one per model instance
    _assert_stops_cleanly(server, procs, signal.SIGTERM)
    port_flag = f"--http-port={server.http_port}"
    assert not [p for p in psutil.process_iter(["name", "cmdline"])
                if p.info["name"] == "tritonserver" and port_flag in " ".join(p.info["cmdline"] or [])]
