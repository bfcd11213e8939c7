"""Serving: the request handlers on a real Runner, then `tpdeploy serve` on a real Triton Inference Server.

Loopback only, ports chosen free by the test, request loops bounded in count and time. One deit_tiny ONNX export
per session. The module's server is launched without LD_LIBRARY_PATH (the pyenv libpython trap) and watched from
the moment of launch; the last test that uses it stops it under load, and the next restarts on its ports.
"""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("pytriton", reason="needs nvidia-pytriton (pip install tpdeploy[serve])")
pytest.importorskip("PIL", reason="needs Pillow")
pytest.importorskip("psutil", reason="needs psutil")
grpcclient = pytest.importorskip("tritonclient.grpc", reason="needs tritonclient[all]")
httpclient = pytest.importorskip("tritonclient.http", reason="needs tritonclient[all]")

from PIL import Image
from tritonclient.utils import InferenceServerException

from harness.serving import ServerProcess, free_ports, http_status, inference_counts
from harness.serving import encoded_image as encoded
from tpdeploy import runtime
from tpdeploy.data.preprocess import preprocess_image
from tpdeploy.data.samples import sample_images
from tpdeploy.errors import DeviceError, TpdeployError
from tpdeploy.serving import service as sv
from tpdeploy.serving.handlers import ModelHandlers, RequestFailed, RequestRefused, top_classes
from tpdeploy.serving.settings import ServeSettings

NAME = "tp"
MAX_BATCH = 8
ATOL, RTOL = 1e-4, 1e-4
DEADLINE_S = 240.0  # no request loop runs longer than this
STOP_WITHIN_S = 10.0
SHUTDOWN_NOISE = ("graceful", "leaked", "Traceback", "killing what Triton left")


# ---------------------------------------------------------------------------------------------- fixtures, helpers


@pytest.fixture(scope="module")
def runner(tiny_onnx):
    return runtime.load(tiny_onnx)


def huge_jpeg():
    """A real 50-megapixel JPEG (8660 x 5774), 0.8 MB."""
    buf = io.BytesIO()
    Image.new("RGB", (8660, 5774), (120, 60, 200)).save(buf, format="JPEG", quality=50)
    return buf.getvalue()


def infer_images(client, module, x, dtype="FP32", name=NAME):
    inp = module.InferInput("images", list(x.shape), dtype)
    inp.set_data_from_numpy(x)
    kwargs = {"client_timeout": 60} if module is grpcclient else {}
    return client.infer(name, [inp], outputs=[module.InferRequestedOutput("logits")], **kwargs).as_numpy("logits")


def classify(client, module, blobs, name=NAME):
    data = np.array([[b] for b in blobs], dtype=np.object_)
    inp = module.InferInput("image", list(data.shape), "BYTES")
    inp.set_data_from_numpy(data)
    kwargs = {"client_timeout": 60} if module is grpcclient else {}
    res = client.infer(f"{name}_classify", [inp], **kwargs)
    return res.as_numpy("classes"), res.as_numpy("scores")


def clients(server):
    return [(server.http_client(), httpclient), (server.grpc_client(), grpcclient)]


class Load:
    """`n` clients (HTTP and gRPC alternating) sending one image per request until stopped; answers checked."""

    def __init__(self, server, expected, images, n=4, requests=None):
        self.server, self.expected, self.images, self.requests = server, expected, images, requests
        self.stop, self.errors, self.wrong, self.answered = threading.Event(), [], [], 0
        self.deadline = time.monotonic() + DEADLINE_S
        self.threads = [threading.Thread(target=self._client, args=(i % 2 == 1,)) for i in range(n)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        if self.requests is None or exc[0] is not None:  # a bounded load runs to its end
            self.stop.set()
        for t in self.threads:
            t.join(DEADLINE_S + 30)

    def wait_answered(self, n):
        while self.answered < n and time.monotonic() < self.deadline and not self.errors:
            time.sleep(0.05)

    def _client(self, use_grpc):
        client = self.server.grpc_client() if use_grpc else self.server.http_client()
        module = grpcclient if use_grpc else httpclient
        try:
            i = 0
            while (
                not self.stop.is_set()
                and time.monotonic() < self.deadline
                and (self.requests is None or i < self.requests)
            ):
                k = i % len(self.images)
                i += 1
                try:
                    got = infer_images(client, module, self.images[k : k + 1])
                except Exception as e:  # counted; the test decides
                    self.errors.append(repr(e))
                    if self.stop.is_set() or self.requests is None:
                        time.sleep(0.02)
                    continue
                self.answered += 1
                if not np.allclose(got, self.expected[k : k + 1], atol=ATOL, rtol=RTOL):
                    self.wrong.append(k)
        finally:
            client.close()


def expected_one_by_one(runner, images):
    return np.concatenate([runner.infer(images[k : k + 1]) for k in range(len(images))])


def assert_stopped_cleanly(server, rc):
    print(f"\nstopped in {server.stop_seconds:.1f} s (exit {rc})")
    log = server.log()
    assert rc == 0, log[-3000:]
    assert server.stop_seconds < STOP_WITHIN_S, (server.stop_seconds, log[-3000:])
    assert server.leftovers == [], log[-3000:]
    assert server.shared_memory == set()
    assert not [w for w in SHUTDOWN_NOISE if w in log], log[-3000:]


# ---------------------------------------------------------------------------------------------- without a server


def test_top_classes():
    logits = np.array([[0.0, 3.0, 1.0, 3.0, -1.0, 2.0, 0.5]], np.float32)
    classes, scores = top_classes(logits, 5)
    assert classes.dtype == np.int64 and scores.dtype == np.float32
    assert classes.tolist() == [[1, 3, 5, 2, 6]]  # ties: lowest index first
    p = np.exp(logits[0] - logits.max())
    np.testing.assert_allclose(scores[0], (p / p.sum())[[1, 3, 5, 2, 6]], rtol=1e-6)


def test_handlers_answer_as_the_runtime(runner):
    handlers = ModelHandlers(runner, NAME)
    x = sample_images(3, seed=2)
    out = handlers.infer_images([{"images": x[:1]}, {"images": x[1:]}])  # two requests, one batch
    np.testing.assert_allclose(np.concatenate([o["logits"] for o in out]), runner.infer(x), atol=ATOL, rtol=RTOL)
    assert [o["logits"].shape[0] for o in out] == [1, 2]
    blobs = [encoded("JPEG", seed=3), encoded("PNG", seed=4, size=(200, 320))]
    got = handlers.classify([{"image": np.array([[b] for b in blobs], dtype=object)}])[0]
    want = top_classes(runner.infer(np.stack([preprocess_image(b, runner.data_config) for b in blobs])))
    np.testing.assert_array_equal(got["classes"], want[0])
    np.testing.assert_allclose(got["scores"], want[1], atol=1e-6)
    assert handlers.images_stats.snapshot()["batch_sizes"] == {3: 1}


@pytest.mark.parametrize(
    "blob,message",
    [
        (b"", "empty image"),
        (b"\x00\x01garbage" * 50, "cannot decode"),
        (None, "too large: 8660x5774"),
        ("truncated", "cannot decode"),
    ],
)
def test_handlers_refuse_bad_images_in_one_line(runner, blob, message):
    handlers = ModelHandlers(runner, NAME)  # serving's limit: 25 megapixels
    if blob is None:
        blob = huge_jpeg()
    elif blob == "truncated":
        blob = encoded("JPEG")[:400]
    with pytest.raises(RequestRefused, match=message) as e:
        handlers.classify([{"image": np.array([[blob]], dtype=object)}])
    assert "\n" not in str(e.value)
    with pytest.raises(RequestRefused, match="no image"):
        handlers.classify([{"image": np.zeros((0, 1), dtype=object)}])
    assert handlers.classify_stats.snapshot()["refused"] == 2 and handlers.broken is None


def test_a_backend_fault_is_a_500_and_a_broken_backend_is_reported_once(tiny_onnx, tmp_path):
    from harness.serving import fault_injecting_runner

    trigger = tmp_path / "broken"
    broken = []
    handlers = ModelHandlers(fault_injecting_runner(tiny_onnx, str(trigger)), NAME, on_broken=broken.append)
    x = sample_images(1)
    handlers.infer_images([{"images": x}])
    trigger.touch()
    for _ in range(3):
        with pytest.raises(RequestFailed, match="illegal memory access") as e:
            handlers.infer_images([{"images": x}])
        assert "\n" not in str(e.value)
    assert len(broken) == 1 and "warm-up batch fails too" in broken[0]
    trigger.unlink()  # a broken backend stays broken: the server stops rather than serve from it again
    with pytest.raises(RequestFailed, match="broken"):
        handlers.infer_images([{"images": x}])


def test_settings_are_checked_once():
    s = ServeSettings("models/deit_small_058.onnx", http_port=9000, grpc_port=9001, metrics_port=None)
    assert (s.name, s.classify_name, s.ports) == (
        "deit_small_058",
        "deit_small_058_classify",
        [("HTTP", 9000), ("gRPC", 9001)],
    )
    for bad, match in [
        ({"http_port": 9001, "grpc_port": 9001}, "must differ"),
        ({"max_batch": 0}, "max_batch must be in"),
        ({"instances": 1.5}, "instances must be an integer"),
        ({"http_port": 70000}, "HTTP port"),
        ({"name": "a b"}, "model name"),
    ]:
        with pytest.raises(TpdeployError, match=match):
            ServeSettings("m.onnx", **bad)


def test_libpython_goes_first_on_ld_path(monkeypatch):
    libdir = sv.python_library_dir()
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere/else")
    with sv.python_library_on_ld_path():
        inside = os.environ["LD_LIBRARY_PATH"]
    assert os.environ["LD_LIBRARY_PATH"] == "/somewhere/else"
    if libdir:
        assert inside.split(os.pathsep)[:2] == [libdir, "/somewhere/else"]


def test_port_in_use_is_a_clear_error(tiny_onnx):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        busy = s.getsockname()[1]
        service = sv.TritonService(
            ServeSettings(tiny_onnx, http_port=busy, grpc_port=free_ports(1)[0], metrics_port=None)
        )
        with pytest.raises(TpdeployError, match=f"127.0.0.1:{busy}"):
            service.start()


def test_serve_without_pillow_says_so_before_starting_anything(tiny_onnx):
    """The classify model needs Pillow: a server without it is refused before the model loads or Triton starts."""
    code = (
        "import sys; sys.modules['PIL'] = None\n"  # `import PIL` raises ImportError from here on
        "from tpdeploy.cli import main; sys.argv = ['tpdeploy'] + sys.argv[1:]; main()"
    )
    ports = [str(p) for p in free_ports(3)]
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "serve",
            tiny_onnx,
            "--http-port",
            ports[0],
            "--grpc-port",
            ports[1],
            "--metrics-port",
            ports[2],
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [
        "error: serving needs Pillow: pip install 'tpdeploy[eval]' (or 'tpdeploy[serve]')"
    ]
    assert "loading" not in done.stderr and "starting Triton" not in done.stderr, done.stderr


# ---------------------------------------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def server(tiny_onnx, runner):
    """The module's server, watched from launch: the moment /v2/health/ready first answers 200, requests go to
    both models over both protocols; `server.early` holds how each went."""
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    s = ServerProcess(tiny_onnx, name=NAME, max_batch=MAX_BATCH, env=env).launch()
    try:
        while http_status(f"{s.http_url}/v2/health/ready", timeout=0.5) != 200:
            assert s.process.poll() is None and time.monotonic() - s.launched_at < 180, s.log()[-3000:]
            time.sleep(0.02)
        s.ready_after = time.monotonic() - s.launched_at
        x = sample_images(2, seed=1)
        jpeg = encoded("JPEG", seed=1)
        calls = [lambda c, m: infer_images(c, m, x), lambda c, m: classify(c, m, [jpeg])]
        s.early = {}

        def early(label, call, make_client, module):
            client = make_client()
            try:
                call(client, module)
                s.early[label] = "ok"
            except Exception as e:  # the test reports it
                s.early[label] = repr(e)
            finally:
                client.close()

        threads = [
            threading.Thread(target=early, args=(f"{m.__name__} {i}", call, make, m))
            for i, call in enumerate(calls)
            for make, m in ((s.http_client, httpclient), (s.grpc_client, grpcclient))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        s.wait_ready()
        yield s
    finally:
        s.close()


def test_readiness_means_answers(server):
    """No request sent once /v2/health/ready first answers 200 fails (PyTriton alone: ready seconds earlier)."""
    assert len(server.early) == 4 and set(server.early.values()) == {"ok"}, server.early
    print(f"\n/v2/health/ready first 200 after {server.ready_after:.1f} s; the 4 requests sent then all answered")


def test_health_config_metrics(server):
    c = server.http_client()
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
    with urllib.request.urlopen(server.metrics_url, timeout=10) as r:
        assert f'nv_inference_count{{model="{NAME}",version="1"}}' in r.read().decode()


def test_http_and_grpc_equal_the_runtime(server, runner):
    x = sample_images(3, seed=11)
    (c, _), (g, _) = clients(server)
    try:
        got_http, got_grpc = infer_images(c, httpclient, x), infer_images(g, grpcclient, x)
        got_one = infer_images(c, httpclient, x[1:2])
    finally:
        c.close()
        g.close()
    assert got_http.shape == (3, 1000) and got_http.dtype == np.float32
    np.testing.assert_allclose(got_http, runner.infer(x), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(got_grpc, runner.infer(x), atol=ATOL, rtol=RTOL)
    np.testing.assert_allclose(got_one, runner.infer(x[1:2]), atol=ATOL, rtol=RTOL)


def test_classify_uses_the_models_recorded_preprocessing(server, runner):
    """Top-5 of a JPEG (and a PNG) = the runtime's on the image preprocessed with the recorded data config
    (DeiT's: bicubic, crop 0.9)."""
    assert (runner.data_config.interpolation, runner.data_config.crop_pct) == ("bicubic", 0.9)
    blobs = [encoded("JPEG", seed=3), encoded("PNG", seed=4, size=(200, 320))]
    want_classes, want_scores = top_classes(
        runner.infer(np.stack([preprocess_image(b, runner.data_config) for b in blobs]))
    )
    for client, module in clients(server):
        try:
            classes, scores = classify(client, module, blobs)
            one, _ = classify(client, module, blobs[1:])
        finally:
            client.close()
        assert classes.shape == (2, 5) and classes.dtype == np.int64 and scores.dtype == np.float32
        assert np.all(np.diff(scores, axis=1) <= 0)  # best first
        np.testing.assert_array_equal(classes, want_classes)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=1e-4)
        np.testing.assert_array_equal(one, want_classes[1:])


def test_8_concurrent_clients_are_batched(server, runner):
    images = sample_images(8, seed=5)
    before = inference_counts(server, NAME)
    with Load(server, expected_one_by_one(runner, images), images, n=8, requests=15) as load:
        pass
    after = inference_counts(server, NAME)
    assert load.errors == [] and load.wrong == []
    inferences, executions = after[0] - before[0], after[1] - before[1]
    assert inferences == 120
    print(f"\n120 requests from 8 clients: mean dynamic batch {inferences / executions:.2f}")
    assert inferences / executions > 1.0  # 8 clients on a busy model: the dynamic batcher groups requests


def _post(url, body: bytes):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_every_bad_request_is_a_400_in_one_line_and_the_server_keeps_serving(server, runner):
    images = sample_images(4, seed=7)
    good_jpeg = encoded("JPEG", seed=9)
    (c, _), (g, _) = clients(server)
    infer_url = f"{server.http_url}/v2/models/{NAME}/infer"
    bad = [
        ("wrong shape http", lambda: infer_images(c, httpclient, np.zeros((1, 3, 100, 100), np.float32)), "shape"),
        ("wrong shape grpc", lambda: infer_images(g, grpcclient, np.zeros((1, 224, 224, 3), np.float32)), "shape"),
        ("wrong dtype http", lambda: infer_images(c, httpclient, np.zeros((1, 3, 224, 224)), "FP64"), "FP64"),
        (
            "wrong dtype grpc",
            lambda: infer_images(g, grpcclient, np.zeros((1, 3, 224, 224), np.int32), "INT32"),
            "INT32",
        ),
        (
            "batch too large",
            lambda: infer_images(c, httpclient, np.zeros((MAX_BATCH + 1, 3, 224, 224), np.float32)),
            "batch",
        ),
        ("empty body", lambda: _post(infer_url, b""), ""),
        ("not JSON", lambda: _post(infer_url, b"{nope"), ""),
        ("garbage bytes http", lambda: classify(c, httpclient, [b"\x00\x01garbage" * 50]), "cannot decode"),
        ("garbage bytes grpc", lambda: classify(g, grpcclient, [os.urandom(2048)]), "cannot decode"),
        ("truncated jpeg", lambda: classify(c, httpclient, [good_jpeg[: len(good_jpeg) // 3]]), "cannot decode"),
        ("0-byte image", lambda: classify(g, grpcclient, [b""]), "empty image"),
        ("50-megapixel image", lambda: classify(c, httpclient, [huge_jpeg()]), "too large"),
        ("one bad image among good", lambda: classify(g, grpcclient, [good_jpeg, b"nope"]), "cannot decode"),
    ]
    results = {}
    with Load(server, expected_one_by_one(runner, images), images, n=4, requests=25) as load:
        try:
            for label, call, _ in bad:
                try:
                    out = call()
                    results[label] = out if isinstance(out, tuple) and isinstance(out[0], int) else ("no error", "")
                except InferenceServerException as e:
                    results[label] = (e.status(), e.message())
                classes, _ = classify(g, grpcclient, [good_jpeg])  # a good request right after each bad one
                assert classes.shape == (1, 5)
        finally:
            c.close()
            g.close()
    for label, _, words in bad:
        status, message = results[label]
        # Triton's own HTTP front-end answers a body that is not JSON with 500 (triton-inference-server/server#8762)
        allowed = ("400", "500") if label == "not JSON" else ("400", "StatusCode.INVALID_ARGUMENT")
        assert str(status) in allowed, (label, status, message)
        if label in ("empty body", "not JSON"):
            message = json.loads(message)["error"]
        assert words in message and "\n" not in message and "Traceback" not in message, (label, message)
    assert load.errors == [] and load.wrong == []


def test_sigterm_under_load_stops_within_10_s_leaving_nothing(server, runner):
    """Last test of the module's server: a supervisor's SIGTERM while 4 clients keep sending."""
    images = sample_images(4, seed=8)
    with Load(server, expected_one_by_one(runner, images), images, n=4) as load:
        load.wait_answered(20)
        assert load.errors == []
        rc = server.stop(signal.SIGTERM)
    assert load.wrong == []
    assert_stopped_cleanly(server, rc)
    log = server.log()
    assert "SIGTERM received: stopping" in log and "stopped." in log


def test_restart_on_the_same_ports_right_after_a_stop_then_ctrl_c_under_load(server, tiny_onnx, runner):
    """The ports of the stopped module server, which served traffic (TIME_WAIT sockets), serve again at once; then
    Ctrl+C (SIGINT to the whole process group, tritonserver and stubs included) under load."""
    if server.process is not None:  # this test run alone
        assert server.stop() == 0
    images = sample_images(2, seed=9)
    with ServerProcess(tiny_onnx, name=NAME, ports=server.ports, max_batch=MAX_BATCH) as again:
        with Load(again, expected_one_by_one(runner, images), images, n=4) as load:
            load.wait_answered(10)
            assert load.errors == [] and load.answered >= 10
            rc = again.stop(signal.SIGINT, group=True)
        assert load.wrong == []
        assert_stopped_cleanly(again, rc)
        assert "SIGINT received: stopping" in again.log()


@pytest.mark.parametrize(
    "sig,group,moment", [(signal.SIGTERM, False, "starting Triton"), (signal.SIGINT, True, "starting Triton")]
)
def test_a_signal_during_start_up_stops_within_10_s_leaving_nothing(tiny_onnx, sig, group, moment):
    """While tritonserver loads the models: it is immune to signals until its handlers are in place (a SIGINT to
    the group used to kill it and orphan its stubs, or leave `serve` waiting 120 s for it)."""
    s = ServerProcess(tiny_onnx, name="starting").launch()
    try:
        s.wait_for_log(moment)
        time.sleep(0.5)
        rc = s.stop(sig, group=group)
        assert_stopped_cleanly(s, rc)
        assert f"{sig.name} received while starting: stopped" in s.log()
    finally:
        s.close()


def test_a_broken_backend_turns_the_server_not_ready_and_stops_it(tiny_onnx, tmp_path):
    """A device fault: that request is a 500 in one line; the warm-up batch fails too, so the server logs it once,
    turns not ready, lets in-flight requests finish and exits 3 (a supervisor restarts it)."""
    trigger = tmp_path / "broken"
    s = ServerProcess(tiny_onnx, name="faulty", fault_trigger=str(trigger))
    with s:
        client = s.http_client()
        try:
            infer_images(client, httpclient, sample_images(1), name="faulty")
            trigger.touch()
            with pytest.raises(InferenceServerException) as e:
                infer_images(client, httpclient, sample_images(1), name="faulty")
        finally:
            client.close()
        assert str(e.value.status()) == "500" and "illegal memory access" in e.value.message()
        assert "\n" not in e.value.message()
        failed_at = time.monotonic()
        ready = []  # (seconds after the failure, /v2/health/ready answered 200) until the server exits
        while s.process.poll() is None and time.monotonic() - failed_at < STOP_WITHIN_S:
            ready.append((time.monotonic() - failed_at, http_status(f"{s.http_url}/v2/health/ready", 0.5) == 200))
            time.sleep(0.05)
        rc = s.stop()
        log = s.log()
        assert rc == DeviceError.exit_code, log[-3000:]
        not_ready = [t for t, ok in ready if not ok]
        assert not_ready and not_ready[0] < 2.0 and not [t for t, ok in ready if ok and t > not_ready[0]], ready
        assert log.count("backend fault") == 1, log[-3000:]
        assert "stopping: the backend no longer answers" in log and "error: the backend no longer answers" in log
        assert s.leftovers == [] and s.shared_memory == set()


def test_a_tritonserver_crash_is_exit_3_and_leaves_nothing(tiny_onnx):
    """tritonserver killed (a crash, the OOM killer): its stubs and their helpers would live on; `serve` stops
    them, removes their shared memory, and exits 3 with the end of Triton's log."""
    with ServerProcess(tiny_onnx, name="crash") as s:
        shared_memory = s.mapped_shared_memory()
        [server] = [p for p in s.processes() if p.name().startswith("tritonserver")]
        server.kill()
        s.process.wait(STOP_WITHIN_S)  # serve notices by itself (a signal now would be an operator's stop)
        rc = s.stop()
        assert rc == DeviceError.exit_code, s.log()[-3000:]
        assert "error: Triton Inference Server stopped unexpectedly" in s.log()
        assert s.leftovers == [] and not [n for n in shared_memory if os.path.exists(f"/dev/shm/{n}")]


def test_a_384_px_model_is_served_with_its_own_preprocessing(family_onnx):
    """vit_small_patch16_384: images [B, 3, 384, 384]; classify resizes to 384 (crop_pct 1) and normalises with
    mean = std = 0.5, as its file records, not DeiT's 224 px ImageNet preprocessing."""
    _, path, _ = family_onnx("vit_small_patch16_384")
    runner = runtime.load(path)
    blob = encoded("JPEG", seed=5, size=(480, 400))
    pre = preprocess_image(blob, runner.data_config)
    assert pre.shape == (3, 384, 384) and runner.data_config.mean == (0.5, 0.5, 0.5)
    want_classes, want_scores = top_classes(runner.infer(pre[None]), 5)
    with ServerProcess(path, name=NAME, max_batch=2) as server:
        client = server.http_client()
        try:
            classes, scores = classify(client, httpclient, [blob])
            logits = infer_images(client, httpclient, pre[None])
        finally:
            client.close()
    np.testing.assert_array_equal(classes, want_classes)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(logits, runner.infer(pre[None]), atol=ATOL, rtol=RTOL)
