"""Triton model repositories for Triton's own backends (onnxruntime_onnx, tensorrt_plan): configs that parse
with tritonclient's model_config_pb2, files with the user's permissions, no partial folder."""

import os
import stat

import pytest

pytest.importorskip("tritonclient.grpc", reason="needs tritonclient (pip install 'tpdeploy[serve]')")

from google.protobuf import text_format
from standin import standin_engine, standin_onnx
from tritonclient.grpc import model_config_pb2

from tpdeploy.errors import TpdeployError
from tpdeploy.serving import triton_config, triton_repo
from tpdeploy.tokenpool import libraries


def _parse(path):
    with open(path, encoding="utf-8") as f:
        return text_format.Parse(f.read(), model_config_pb2.ModelConfig())


def test_repository_onnx_config_parses(tiny_onnx, tmp_path):
    repo = tmp_path / "repo"
    report = triton_repo.write_repository(tiny_onnx, str(repo), name="deit_tiny_tp", max_batch=16, instances=2)
    cfg = _parse(repo / "deit_tiny_tp" / "config.pbtxt")
    assert cfg.name == "deit_tiny_tp" and cfg.platform == "onnxruntime_onnx"
    assert cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == triton_config.DEFAULT_QUEUE_DELAY_US
    fp32 = model_config_pb2.TYPE_FP32
    assert [(i.name, i.data_type, list(i.dims)) for i in cfg.input] == [("images", fp32, [3, 224, 224])]
    assert [(o.name, o.data_type, list(o.dims)) for o in cfg.output] == [("logits", fp32, [1000])]
    assert cfg.instance_group[0].count == 2
    assert (repo / "deit_tiny_tp" / "1" / "model.onnx").read_bytes() == open(tiny_onnx, "rb").read()
    assert report.plugin is None and f"--model-repository={repo}" in (repo / "deit_tiny_tp" / "README.txt").read_text()
    assert sorted(os.listdir(repo)) == ["deit_tiny_tp"]  # no temporary folder left


def test_repository_files_get_the_users_permissions(tiny_onnx, tmp_path):
    """A non-root Triton container must read what we write: umask modes, not mkstemp's 0600 / mkdtemp's 0700."""
    old = os.umask(0o022)
    try:
        triton_repo.write_repository(tiny_onnx, str(tmp_path / "repo"), name="m")
    finally:
        os.umask(old)
    for root, _dirs, files in os.walk(tmp_path / "repo"):
        assert stat.S_IMODE(os.stat(root).st_mode) == 0o755, root
        for name in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, name)).st_mode) == 0o644, name


def test_repository_fp16_and_fixed_batch_onnx(tmp_path):
    fp16 = standin_onnx(tmp_path / "m16.onnx", dtype="float16")
    triton_repo.write_repository(fp16, str(tmp_path / "repo"), name="m16")
    cfg = _parse(tmp_path / "repo" / "m16" / "config.pbtxt")
    assert cfg.input[0].data_type == cfg.output[0].data_type == model_config_pb2.TYPE_FP16
    fixed = standin_onnx(tmp_path / "m8.onnx", batch=8)
    report = triton_repo.write_repository(fixed, str(tmp_path / "repo"), name="m8")
    text = (tmp_path / "repo" / "m8" / "config.pbtxt").read_text()
    cfg = _parse(tmp_path / "repo" / "m8" / "config.pbtxt")
    assert "max_batch_size: 0" in text and cfg.max_batch_size == 0 and not cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [8, 3, 224, 224] and any("fixed batch" in n for n in report.notes)


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    lib = tmp_path / "build" / libraries.PLUGIN_LIBRARY
    lib.parent.mkdir()
    lib.write_bytes(b"\x7fELF fake plugin")
    monkeypatch.setenv(libraries.PLUGIN_ENV, str(lib))
    return lib


def test_repository_engine_config_parses_with_plugin(tmp_path, plugin):
    onnx_path = standin_onnx(tmp_path / "m.onnx", classes=1000)
    engine, _ = standin_engine(tmp_path, onnx_path, name="deit_small_tp.plan", fp16=True, max_batch=16)
    repo = tmp_path / "repo"
    report = triton_repo.write_repository(
        engine, str(repo), name="tp_trt", max_batch=32, instances=2, plugin=str(plugin)
    )
    cfg = _parse(repo / "tp_trt" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.default_model_filename == "model.plan"
    assert cfg.max_batch_size == 16 and cfg.HasField("dynamic_batching")  # clamped to the engine's profile
    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP16 and list(cfg.input[0].dims) == [3, 224, 224]
    assert list(cfg.output[0].dims) == [1000]
    assert cfg.instance_group[0].count == 2
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (repo / "tp_trt" / "1" / "model.plan").read_bytes() == open(engine, "rb").read()
    copied = repo / "tp_trt" / "libtpdeploy_plugin.so"
    assert copied.read_bytes() == plugin.read_bytes() and report.plugin == str(copied)
    readme = (repo / "tp_trt" / "README.txt").read_text()
    assert f"tritonserver --model-repository={repo} --backend-config=tensorrt,plugins={copied}" in readme
    assert f"LD_PRELOAD={copied} tritonserver --model-repository={repo}" in readme


def test_repository_engine_without_its_plugin(tmp_path, plugin, monkeypatch):
    engine, _ = standin_engine(tmp_path, standin_onnx(tmp_path / "m.onnx"), name="e.engine")
    monkeypatch.delenv(libraries.PLUGIN_ENV)
    monkeypatch.setattr(libraries, "_PACKAGE", tmp_path / "pkg")  # the default search finds no plugin
    report = triton_repo.write_repository(engine, str(tmp_path / "repo"), name="e", max_batch=4)
    assert report.plugin is None and any("no libtpdeploy_plugin.so found" in n for n in report.notes)
    assert "plugins=/path/to/libtpdeploy_plugin.so" in (tmp_path / "repo" / "e" / "README.txt").read_text()
    with pytest.raises(TpdeployError, match="library not found"):
        triton_repo.write_repository(engine, str(tmp_path / "repo"), name="e2", plugin=str(tmp_path / "no.so"))
    other = tmp_path / "other.so"
    other.write_bytes(b"another plugin build")
    with pytest.raises(TpdeployError, match="not the TokenPool plugin library"):
        triton_repo.write_repository(engine, str(tmp_path / "repo"), name="e3", plugin=str(other))


def test_an_engine_without_sidecar_is_refused(tmp_path):
    """100 random bytes named .plan are not an engine tpdeploy can describe: no repository is written."""
    engine = tmp_path / "random.plan"
    engine.write_bytes(os.urandom(100))
    with pytest.raises(TpdeployError, match="no sidecar"):
        triton_repo.write_repository(str(engine), str(tmp_path / "repo"), name="r")
    assert not (tmp_path / "repo" / "r").exists()


def test_repository_refuses_to_overwrite(tmp_path):
    model = standin_onnx(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    triton_repo.write_repository(model, str(repo), name="m", max_batch=4)
    with pytest.raises(TpdeployError, match="already exists"):
        triton_repo.write_repository(model, str(repo), name="m", max_batch=8)
    assert _parse(repo / "m" / "config.pbtxt").max_batch_size == 4
    triton_repo.write_repository(model, str(repo), name="m", max_batch=8, overwrite=True)
    assert _parse(repo / "m" / "config.pbtxt").max_batch_size == 8
    assert sorted(os.listdir(repo)) == ["m"]
    with pytest.raises(TpdeployError, match="cannot tell the format"):
        triton_repo.write_repository(str(tmp_path / "m.bin"), str(repo))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(TpdeployError, match="cannot read ONNX"):
        triton_repo.write_repository(str(bad), str(repo), name="bad")
    assert sorted(os.listdir(repo)) == ["m"]


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_an_overwrite_interrupted_between_its_renames_puts_the_old_entry_back(tmp_path, monkeypatch, interruption):
    """--overwrite moves the old entry aside, then the new one in: a Ctrl+C (or a failure) between the two must not
    lose both (fault injection: the second rename fails)."""
    model = standin_onnx(tmp_path / "m.onnx")
    repo = tmp_path / "repo"
    triton_repo.write_repository(model, str(repo), name="m", max_batch=4)
    before = {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    rename, calls = os.rename, []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:
            raise interruption
        return rename(src, dst)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(KeyboardInterrupt if interruption is KeyboardInterrupt else TpdeployError):
        triton_repo.write_repository(model, str(repo), name="m", max_batch=8, overwrite=True)
    monkeypatch.setattr(os, "rename", rename)
    assert len(calls) == 3  # aside, in (failed), back
    assert {p.relative_to(repo): p.read_bytes() for p in repo.rglob("*") if p.is_file()} == before
    assert sorted(os.listdir(repo)) == ["m"]  # no .part or .old folder left
