"""Output files: whole or not at all, never over an input, with the permissions the user's umask gives."""

import os
import stat

import pytest

from tpdeploy.artifacts.files import atomic_output, check_output, write_text
from tpdeploy.errors import TpdeployError


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_outputs_get_the_umask_permissions(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        write_text(str(tmp_path / "out.json"), "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "out.json").st_mode) == mode


def test_an_input_is_never_written_over(tmp_path):
    ck = tmp_path / "ck.pth"
    ck.write_bytes(b"weights")
    os.symlink(ck, tmp_path / "link.pth")
    for target in (ck, tmp_path / "link.pth", tmp_path / "." / "ck.pth"):
        with pytest.raises(TpdeployError, match="also an input"):
            check_output(str(target), inputs=[str(ck)])
    with pytest.raises(TpdeployError, match="also an input"):
        with atomic_output(str(tmp_path / "link.pth"), inputs=[str(ck)]):
            pass
    assert ck.read_bytes() == b"weights"


def test_a_failed_write_leaves_nothing_and_keeps_the_old_file(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(str(out)) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("the export failed")
    assert out.read_bytes() == b"old" and sorted(os.listdir(tmp_path)) == ["model.onnx"]


def test_outputs_that_cannot_be_written(tmp_path):
    with pytest.raises(TpdeployError, match="does not exist"):
        check_output(str(tmp_path / "missing" / "x.onnx"))
    with pytest.raises(TpdeployError, match="it is a folder"):
        check_output(str(tmp_path))
    with pytest.raises(TpdeployError, match="empty"):
        check_output("")
