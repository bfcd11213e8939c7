"""Latency statistics that say how many samples they stand on, and timing settings that can measure."""

import pytest
from test_cli import run

from tpdeploy import runtime
from tpdeploy.errors import InvalidArgumentError
from tpdeploy.tasks import bench


def test_percentiles_need_enough_samples():
    assert [bench.min_samples(q) for q in bench.PERCENTILES] == [10, 20, 100]
    three = bench.LatencyStats.of([0.001, 0.002, 0.003], batch=4)
    assert (three.samples, three.p90, three.p95, three.p99) == (3, None, None, None)
    assert three.median == pytest.approx(2.0) and three.throughput == pytest.approx(4 / 0.002)
    seconds = [i / 1000 for i in range(1, 101)]
    assert bench.LatencyStats.of(seconds[:99], 1).p99 is None
    full = bench.LatencyStats.of(seconds, 1)
    assert full.p90 == pytest.approx(90.1) and full.p99 == pytest.approx(99.01) and full.p99 < full.max
    assert bench.LatencyStats.of(seconds[:20], 1).p95 is not None
    text = bench.table([("three", three), ("hundred", full)])
    assert text.splitlines()[2].split()[2] == "3" and text.splitlines()[2].count("n/a") == 3
    assert "n/a" not in text.splitlines()[3] and "99.01" in text.splitlines()[3]
    with pytest.raises(InvalidArgumentError, match="at least one sample"):
        bench.LatencyStats.of([], 1)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"duration_s": 0.0}, "duration_s must be > 0"),
        ({"warmup_ms": -1.0}, "warmup_ms must be >= 0"),
        ({"iterations": 0}, "iterations must be >= 1"),
        ({"duration_s": float("nan")}, "finite"),
    ],
)
def test_measure_refuses_settings_that_cannot_measure(kwargs, message):
    with pytest.raises(InvalidArgumentError, match=message):
        bench.measure([lambda: None], **kwargs)


def test_measure_runs_min_rounds_past_the_duration():
    times = bench.measure([lambda: None], warmup_ms=0, duration_s=1e-9, min_rounds=7)
    assert len(times[0]) == 7


def test_measure_interleaves_and_counts_rounds():
    order = []
    times = bench.measure([lambda: order.append("a"), lambda: order.append("b")], warmup_ms=0, iterations=3)
    assert [len(t) for t in times] == [3, 3]
    assert order[2:] == ["a", "b", "b", "a", "a", "b"]  # after one warm-up run each, the order alternates


@pytest.mark.parametrize(
    "option,value", [("--duration", "0"), ("--duration", "-1"), ("--warmup-ms", "-5"), ("--duration", "nan")]
)
def test_bench_refuses_durations_that_cannot_measure(tmp_path, option, value):
    result = run("bench", tmp_path / "x.onnx", option, value)
    assert result.returncode == 2 and "is not a finite number" in result.stderr and "Traceback" not in result.stderr


def test_onnxruntime_spinning_is_a_session_option(tiny_onnx):
    key = "session.intra_op.allow_spinning"
    default = runtime.load(tiny_onnx)
    quiet = runtime.load(tiny_onnx, spinning=False)
    assert default.session.get_session_options().get_session_config_entry(key) == "1"
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
