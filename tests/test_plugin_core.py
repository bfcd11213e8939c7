"""The TensorRT plugin's core (plugins/tokenpool/tokenPoolCore.{h,cpp}): every decision of the plugin, with no
TensorRT, on the CPU. harness/cuda_emulator/build.py compiles the core, its C API for these tests
(tests/plugin_core/coreTestApi.cpp) and the emulated kernel sources into one library, so an enqueue through the
core runs the real kernels end to end, against tpdeploy.token_pool (the PyTorch reference)."""

import ctypes
import shutil
from pathlib import Path

import pytest
import torch
from test_kernels_emulated import F16, F32, bits, emulator_build, with_controls

from tpdeploy import token_pool
from tpdeploy.tokenpool import cuda_kernels
from tpdeploy.tokenpool.definition import PLUGIN_FIELDS

CORE_SOURCES = [
    emulator_build.KERNEL_DIR / "tokenPoolCore.cpp",
    Path(__file__).parent / "plugin_core" / "coreTestApi.cpp",
]
MAX_DIMS = 8
FLOAT, HALF, BF16, INT8, INT32, INT64, OTHER = range(7)  # DataType
LINEAR, OTHER_FORMAT = range(2)  # Format
F_INT32, F_INT64, F_CHAR, F_OTHER = range(4)  # FieldType
SUCCESS, INVALID_ARGUMENT, INVALID_CONFIG, FAILED_EXECUTION = range(4)  # Status
TYPES = {F32: FLOAT, F16: HALF}


# --- the core's structs (tokenPoolCore.h) ---------------------------------------------------------------------


class Dims(ctypes.Structure):
    _fields_ = [("nbDims", ctypes.c_int32), ("d", ctypes.c_int64 * MAX_DIMS)]


def dims(shape):
    return Dims(len(shape), (ctypes.c_int64 * MAX_DIMS)(*shape))


class TensorDesc(ctypes.Structure):
    _fields_ = [("dims", Dims), ("type", ctypes.c_int32), ("format", ctypes.c_int32)]


class DynamicTensorDesc(ctypes.Structure):
    _fields_ = [("desc", TensorDesc), ("min", Dims), ("max", Dims)]


class OutputExtent(ctypes.Structure):
    _fields_ = [("fromX", ctypes.c_int32), ("value", ctypes.c_int64)]


class OutputShape(ctypes.Structure):
    _fields_ = [("nbDims", ctypes.c_int32), ("d", OutputExtent * MAX_DIMS)]


class Field(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("data", ctypes.c_void_p),
        ("type", ctypes.c_int32),
        ("length", ctypes.c_int32),
    ]


def field(name, value, kind=F_INT32, length=None):
    """(Field, the buffer its data points to): ints as kind's C type, a str as kCHAR with its NUL (as TensorRT's
    ONNX parser passes strings), None as a null pointer."""
    if value is None:
        buffer = None
    elif isinstance(value, str):
        buffer = ctypes.create_string_buffer(value.encode())
    else:
        values = value if isinstance(value, list) else [value]
        ctype = {F_INT32: ctypes.c_int32, F_INT64: ctypes.c_int64, F_OTHER: ctypes.c_float}[kind]
        buffer = (ctype * len(values))(*values)
    length = (len(buffer) if buffer is not None else 0) if length is None else length
    data = ctypes.cast(buffer, ctypes.c_void_p) if buffer is not None else None
    return Field(name.encode(), data, kind, length), buffer


def attribute_fields(k, t=3, mode="kmedoids", weighted=True):
    return [
        field("num_clusters", k),
        field("iterations", t),
        field("mode", mode, F_CHAR),
        field("weighted", int(weighted)),
    ]


# --- the library ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("needs g++ (C++17) to build the plugin core with the CUDA emulator")
    path = emulator_build.build(tmp_path_factory.mktemp("plugin_core"), extra_sources=CORE_SOURCES)
    lib = with_controls(cuda_kernels.load(str(path)))  # the kernels' C API and the emulator's controls, plus:
    p, i32, text, size = ctypes.c_void_p, ctypes.c_int32, ctypes.c_char_p, ctypes.c_size_t
    for name, args, result in [
        ("tpcCreate", [ctypes.POINTER(Field), i32, ctypes.POINTER(i32), text, size, text, size], p),
        ("tpcDestroy", [p], None),
        ("tpcAttributes", [p, ctypes.POINTER(i32), ctypes.POINTER(i32), text, size, ctypes.POINTER(i32)], None),
        ("tpcStrings", [p, text, text, size], None),
        ("tpcFields", [p, ctypes.POINTER(Field), i32], i32),
        ("tpcOutputTypes", [p, ctypes.POINTER(i32), i32, ctypes.POINTER(i32), i32, text, size], i32),
        ("tpcOutputShapes", [p, ctypes.POINTER(Dims), i32, ctypes.POINTER(OutputShape), i32, text, size], i32),
        ("tpcSupportsFormatCombination", [p, i32, ctypes.POINTER(DynamicTensorDesc), i32, i32], ctypes.c_bool),
        ("tpcConfigure", [p, ctypes.POINTER(DynamicTensorDesc), i32, i32, text, size], i32),
        ("tpcWorkspaceSize", [p, ctypes.POINTER(DynamicTensorDesc), i32], size),
        ("tpcShapeChange", [p, ctypes.POINTER(TensorDesc), i32, i32, text, size], i32),
        ("tpcEnqueue", [p, ctypes.POINTER(TensorDesc), ctypes.POINTER(p), ctypes.POINTER(p), p, text, size], i32),
    ]:
        getattr(lib, name).argtypes, getattr(lib, name).restype = args, result
    return lib


def message_buffer():
    return ctypes.create_string_buffer(1024)


class Core:
    """One TokenPoolCore made from plugin fields (parseFields), and its methods as (status, message[, value])."""

    def __init__(self, lib, fields):
        self.lib = lib
        array = (Field * max(len(fields), 1))(*(f for f, _ in fields))
        status, message, warnings = ctypes.c_int32(), message_buffer(), message_buffer()
        self.handle = lib.tpcCreate(
            array, len(fields), ctypes.byref(status), message, len(message), warnings, len(warnings)
        )
        self.status, self.message = status.value, message.value.decode()
        self.warnings = warnings.value.decode().splitlines()
        assert (self.handle is not None) == (self.status == SUCCESS)

    def __del__(self):
        if self.handle is not None:
            self.lib.tpcDestroy(self.handle)

    def _call(self, function, *args):
        message = message_buffer()
        return function(self.handle, *args, message, len(message)), message.value.decode()

    def attributes(self):
        k, t, weighted, mode = ctypes.c_int32(), ctypes.c_int32(), ctypes.c_int32(), message_buffer()
        self.lib.tpcAttributes(self.handle, ctypes.byref(k), ctypes.byref(t), mode, len(mode), ctypes.byref(weighted))
        return {"num_clusters": k.value, "iterations": t.value, "mode": mode.value.decode(), "weighted": weighted.value}

    def strings(self):
        cache_id, metadata = message_buffer(), message_buffer()
        self.lib.tpcStrings(self.handle, cache_id, metadata, len(cache_id))
        return cache_id.value.decode(), metadata.value.decode()

    def output_type(self, x_type, w_type, nb_inputs=2, nb_outputs=1):
        out = (ctypes.c_int32 * 2)(-1, -1)
        status, message = self._call(
            self.lib.tpcOutputTypes, (ctypes.c_int32 * 2)(x_type, w_type), nb_inputs, out, nb_outputs
        )
        return status, message, out[0]

    def output_shape(self, x_shape, w_shape):
        """(status, message, Y's extents as the core describes them, Y resolved against X's extents)."""
        out = OutputShape()
        status, message = self._call(
            self.lib.tpcOutputShapes, (Dims * 2)(dims(x_shape), dims(w_shape)), 2, ctypes.byref(out), 1
        )
        extents = [(e.fromX, e.value) for e in out.d[: out.nbDims]]
        return status, message, extents, [x_shape[i] if i >= 0 else v for i, v in extents]

    def supports(self, pos, *descs):
        """descs: (type, format) of X, W, Y."""
        inout = (DynamicTensorDesc * 3)(*(DynamicTensorDesc(TensorDesc(dims([]), t, f)) for t, f in descs))
        return self.lib.tpcSupportsFormatCombination(self.handle, pos, inout, 2, 1)

    @staticmethod
    def profile(x_min, x_max, x_type=HALF, w_type=FLOAT):
        """X and W over a profile from X's min and max shapes (desc.dims: -1 where min and max differ)."""

        def desc(lo, hi, t):
            return DynamicTensorDesc(
                TensorDesc(dims([a if a == b else -1 for a, b in zip(lo, hi)]), t, LINEAR), dims(lo), dims(hi)
            )

        return (DynamicTensorDesc * 2)(desc(x_min, x_max, x_type), desc(x_min[:2], x_max[:2], w_type))

    def configure(self, x_min, x_max, x_type=HALF, w_type=FLOAT):
        return self._call(self.lib.tpcConfigure, self.profile(x_min, x_max, x_type, w_type), 2, 1)

    def workspace(self, x_max, x_type=HALF, w_type=FLOAT):
        return self.lib.tpcWorkspaceSize(self.handle, self.profile(x_max, x_max, x_type, w_type), 2)

    @staticmethod
    def descs(x_shape, w_shape, x_type, w_type):
        return (TensorDesc * 2)(TensorDesc(dims(x_shape), x_type, LINEAR), TensorDesc(dims(w_shape), w_type, LINEAR))

    def shape_change(self, x_shape, w_shape, x_type=HALF, w_type=FLOAT):
        return self._call(self.lib.tpcShapeChange, self.descs(x_shape, w_shape, x_type, w_type), 2, 1)

    def enqueue_pointers(self, x_shape, x_type, w_type, x, w, y, workspace):
        """enqueue() on raw pointers (ints, or None for null ones); W's shape is X's [B, N]."""
        return self._call(
            self.lib.tpcEnqueue,
            self.descs(x_shape, x_shape[:2], x_type, w_type),
            (ctypes.c_void_p * 2)(x, w),
            (ctypes.c_void_p * 1)(y),
            workspace,
        )

    def enqueue(self, x, w, y, workspace):
        return self.enqueue_pointers(
            list(x.shape),
            TYPES[x.dtype],
            TYPES[w.dtype],
            *(t.data_ptr() if t is not None else None for t in (x, w, y, workspace)),
        )


def fields_of(lib, core):
    """(name, type, length, value) of core's serialFields(), or of the creator's field list without a core."""
    count = lib.tpcFields(core.handle if core else None, None, 0)
    out = (Field * count)()
    lib.tpcFields(core.handle if core else None, out, count)

    def value(f):
        if not f.data:
            return None
        if f.type == F_CHAR:
            return ctypes.string_at(f.data, f.length)
        return ctypes.cast(f.data, ctypes.POINTER(ctypes.c_int32 if f.type == F_INT32 else ctypes.c_int64))[0]

    return [(f.name.decode(), f.type, f.length, value(f)) for f in out]


# --- fields ---------------------------------------------------------------------------------------------------


def test_fields_from_the_onnx_parser(lib):
    core = Core(
        lib,
        attribute_fields(110, 2, "kmeans", False)
        + [field("plugin_version", "1", F_CHAR), field("plugin_namespace", "tpdeploy", F_CHAR)],
    )
    assert core.status == SUCCESS and core.warnings == []  # plugin_version and plugin_namespace: ignored silently
    assert core.attributes() == {"num_clusters": 110, "iterations": 2, "mode": "kmeans", "weighted": 0}
    cache_id, metadata = core.strings()
    assert cache_id == "tpdeploy::TokenPool/1;K=110;T=2;mode=kmeans;weighted=0"
    assert metadata == "num_clusters=110 iterations=2 mode=kmeans weighted=0"


def test_defaults_int64_fields_and_strings_without_a_nul(lib):
    core = Core(lib, [field("num_clusters", 7)])
    assert core.attributes() == {"num_clusters": 7, "iterations": 3, "mode": "kmedoids", "weighted": 1}
    core = Core(
        lib,
        [
            field("num_clusters", 7, F_INT64),
            field("iterations", 0, F_INT64),
            field("weighted", 0, F_INT64),
            field("mode", "kmeans", F_CHAR, length=6),
        ],
    )
    assert core.attributes() == {"num_clusters": 7, "iterations": 0, "mode": "kmeans", "weighted": 0}


@pytest.mark.parametrize(
    "bad,message",
    [
        (field("num_clusters", "110", F_CHAR), "'num_clusters' must be one kINT32"),
        (field("num_clusters", 1.5, F_OTHER), "'num_clusters' must be one kINT32"),
        (field("num_clusters", [3, 4]), "'num_clusters' must be one kINT32"),
        (field("num_clusters", None, length=1), "'num_clusters' must be one kINT32"),
        (field("num_clusters", 2**31, F_INT64), "'num_clusters' must be one kINT32 (or kINT64) value in int32 range"),
        (field("num_clusters", 0), "num_clusters must be >= 1, got 0"),
        (field("iterations", -1), "iterations must be >= 0, got -1"),
        (field("iterations", "3", F_CHAR), "'iterations' must be one kINT32"),
        (field("weighted", 2), "weighted must be 0 or 1, got 2"),
        (field("mode", "kmedian", F_CHAR), "mode must be 'kmedoids' or 'kmeans', got 'kmedian'"),
        (field("mode", 1), "'mode' must be a kCHAR string"),
        (field("mode", None, F_CHAR, length=8), "'mode' must be a kCHAR string"),
    ],
)
def test_bad_fields_are_refused_with_the_reason(lib, bad, message):
    fields = [f for f in attribute_fields(5) if f[0].name != bad[0].name] + [bad]
    core = Core(lib, fields)
    assert core.status == INVALID_ARGUMENT and message in core.message


def test_num_clusters_is_required(lib):
    core = Core(lib, [field("iterations", 2), field("mode", "kmeans", F_CHAR)])
    assert core.status == INVALID_ARGUMENT and core.message == "plugin field 'num_clusters' is required"


def test_unknown_fields_are_warned_about_and_ignored(lib):
    nameless = Field(None, None, F_INT32, 0)
    core = Core(lib, attribute_fields(5) + [field("temperature", 2), field("clusters", 3), (nameless, None)])
    assert core.status == SUCCESS
    assert core.warnings == ["ignoring unknown plugin field 'temperature'", "ignoring unknown plugin field 'clusters'"]
    assert core.attributes()["num_clusters"] == 5


def test_creator_fields_are_the_onnx_attributes_the_engine_build_passes(lib):
    """The creator's list (the ONNX parser only passes the attributes listed there) matches
    tpdeploy.tokenpool.definition's PLUGIN_FIELDS, with TensorRT's ONNX parser's mapping INT -> kINT32, STRING ->
    kCHAR."""
    kinds = {"INT": F_INT32, "STRING": F_CHAR}
    listed = fields_of(lib, None)
    assert {name: kind for name, kind, _, _ in listed} == {name: kinds[a] for name, a in PLUGIN_FIELDS.items()}
    assert all(value is None for *_, value in listed)


@pytest.mark.parametrize(
    "k,t,mode,weighted", [(1, 0, "kmedoids", True), (110, 3, "kmeans", False), (7, 9, "kmeans", True)]
)
def test_serialised_fields_parse_back_to_the_same_attributes(lib, k, t, mode, weighted):
    core = Core(lib, attribute_fields(k, t, mode, weighted))
    serial = fields_of(lib, core)
    assert serial == [
        ("num_clusters", F_INT32, 1, k),
        ("iterations", F_INT32, 1, t),
        ("mode", F_CHAR, len(mode) + 1, mode.encode() + b"\0"),
        ("weighted", F_INT32, 1, int(weighted)),
    ]
    count = lib.tpcFields(core.handle, None, 0)
    raw = (Field * count)()
    lib.tpcFields(core.handle, raw, count)
    again = Core(lib, [(f, None) for f in raw])  # what createPlugin gets from an engine (kRUNTIME)
    assert again.status == SUCCESS and again.warnings == []
    assert again.attributes() == core.attributes() and again.strings() == core.strings()


# --- types, shapes, formats -------------------------------------------------------------------------------------


def test_output_type_is_x_type_and_w_must_be_float32(lib):
    core = Core(lib, attribute_fields(5))
    assert core.output_type(FLOAT, FLOAT) == (SUCCESS, "", FLOAT)
    assert core.output_type(HALF, FLOAT) == (SUCCESS, "", HALF)  # mixed: fp16 X, float32 significance
    status, message, _ = core.output_type(HALF, HALF)
    assert status == INVALID_ARGUMENT
    assert message == "X must be float32 or float16 and W float32, got X float16 and W float16"
    assert "got X bfloat16 and W float32" in core.output_type(BF16, FLOAT)[1]
    assert "got X int8 and W an unsupported type" in core.output_type(INT8, OTHER)[1]
    assert core.output_type(FLOAT, FLOAT, nb_inputs=3)[:2] == (
        INVALID_ARGUMENT,
        "expects 2 inputs (X, W) and 1 output, got 3 and 1",
    )


def test_output_shape_is_b_k_c_with_unknown_extents_taken_from_x(lib):
    core = Core(lib, attribute_fields(110))
    status, _, extents, shape = core.output_shape([-1, 196, 384], [-1, 196])
    assert status == SUCCESS and extents == [(0, 0), (-1, 110), (2, 0)] and shape == [-1, 110, 384]
    assert core.output_shape([8, -1, -1], [8, -1])[3] == [8, 110, -1]  # N unknown: K is checked later
    assert core.output_shape([-1, 110, 3], [-1, 110])[0] == SUCCESS  # K = N


@pytest.mark.parametrize(
    "x,w,message",
    [
        (
            [-1, 109, 384],
            [-1, 109],
            "num_clusters K=110 exceeds the number of tokens N=109 (X [-1, 109, 384]); K must be <= N",
        ),
        ([-1, -1, 384], [-1, 50], "exceeds the number of tokens N=50"),  # N known from W only
        ([-1, 196], [-1, 196], "X must be [B, N, C] and W [B, N], got X [-1, 196] and W [-1, 196]"),
        ([-1, 196, 384], [-1, 196, 1], "X must be [B, N, C] and W [B, N]"),
        ([4, 196, 384], [8, 196], "W must be [B, N] = [X.shape[0], X.shape[1]], got X [4, 196, 384] and W [8, 196]"),
        ([4, 196, 384], [4, 197], "W must be [B, N]"),
    ],
)
def test_output_shape_refusals(lib, x, w, message):
    status, got, _, _ = Core(lib, attribute_fields(110)).output_shape(x, w)
    assert status == INVALID_ARGUMENT and message in got


def test_format_combinations(lib):
    core = Core(lib, attribute_fields(5))
    f32, f16 = (FLOAT, LINEAR), (HALF, LINEAR)
    assert core.supports(0, f32) and core.supports(0, f16)
    assert not core.supports(0, (BF16, LINEAR)) and not core.supports(0, (INT8, LINEAR))
    assert not core.supports(0, (FLOAT, OTHER_FORMAT))
    assert core.supports(1, f16, f32) and core.supports(1, f32, f32)
    assert not core.supports(1, f16, f16) and not core.supports(1, f32, f16)  # W: float32 only
    assert not core.supports(1, f32, (FLOAT, OTHER_FORMAT))
    assert core.supports(2, f16, f32, f16) and core.supports(2, f32, f32, f32)
    assert not core.supports(2, f16, f32, f32) and not core.supports(2, f32, f32, f16)  # Y: X's type
    assert not core.supports(2, f32, f32, (FLOAT, OTHER_FORMAT))
    assert not core.supports(3, f32, f32, f32) and not core.supports(-1, f32, f32, f32)


# --- build-time and run-time checks, workspace --------------------------------------------------------------------


def test_configure_checks_the_whole_profile(lib):
    core = Core(lib, attribute_fields(110))
    assert core.configure([1, 196, 384], [64, 196, 384]) == (SUCCESS, "")
    assert core.configure([1, 110, 384], [64, 1024, 384]) == (SUCCESS, "")
    status, message = core.configure([1, 100, 384], [64, 196, 384])
    assert status == INVALID_ARGUMENT and message.endswith("K must be <= N (optimization profile min/max)")
    status, message = core.configure([1, 196, 384], [64, 1025, 384])
    assert status == INVALID_CONFIG
    assert message.startswith(
        "the profile's largest input X [64, 1025, 384] is not supported by the kernel: unsupported"
    )
    status, message = core.configure([1, 196, 384], [64, 196, 384], w_type=HALF)
    assert status == INVALID_ARGUMENT and "W float32" in message


def test_shape_change_checks_the_concrete_shapes(lib):
    core = Core(lib, attribute_fields(110))
    assert core.shape_change([8, 196, 384], [8, 196]) == (SUCCESS, "")
    assert core.shape_change([8, 196, 384], [8, 196], x_type=FLOAT) == (SUCCESS, "")
    assert "K must be <= N" in core.shape_change([8, 100, 384], [8, 100])[1]
    assert "W must be [B, N]" in core.shape_change([8, 196, 384], [4, 196])[1]
    status, message = core.shape_change([8, 1025, 384], [8, 1025])
    assert status == INVALID_ARGUMENT
    assert message.startswith(
        "input X [8, 1025, 384] is not supported by the kernel: unsupported: the TokenPool kernels take N <= 1024"
    )
    assert core.shape_change([8, 196, 65537], [8, 196])[0] == INVALID_ARGUMENT
    assert "W float32" in core.shape_change([8, 196, 384], [8, 196], w_type=HALF)[1]


@pytest.mark.parametrize(
    "mode,t,x_type", [("kmedoids", 3, HALF), ("kmedoids", 0, FLOAT), ("kmeans", 2, FLOAT), ("kmeans", 3, HALF)]
)
def test_workspace_is_the_kernels_for_the_profile_max_and_grows_with_b_n_c(lib, mode, t, x_type):
    k = 20
    core = Core(lib, attribute_fields(k, t, mode))

    def size(b, n, c):
        return core.workspace([b, n, c], x_type)

    for b, n, c in ((1, 20, 8), (8, 196, 384), (64, 1024, 768)):
        p = cuda_kernels.Params(b, n, c, k, t, int(mode == "kmeans"), 1, int(x_type == HALF), 0)
        assert size(b, n, c) == lib.tokenPoolWorkspaceSize(ctypes.byref(p)) > 0
    grid = [(b, n, c) for b in (1, 2, 7, 32) for n in (20, 33, 196, 577) for c in (1, 64, 385)]
    for b, n, c in grid:  # never smaller for a larger problem (256-byte buffer alignment: not always larger)
        assert size(b + 1, n, c) >= size(b, n, c) and size(b, n + 1, c) >= size(b, n, c)
        assert size(b, n, c + 1) >= size(b, n, c)
        assert size(8 * b, n, c) > size(b, n, c)
    if mode == "kmeans" and t > 0:  # centres [B, K, C] and dot products [B, K, N]
        assert size(4, 64, 128) > size(4, 64, 64) and size(4, 128, 64) > size(4, 64, 64)
    assert size(4, k - 1, 64) == 0  # K > N: no valid problem
    assert core.workspace([4, 64, 64], x_type, w_type=HALF) == 0


# --- enqueue through the core, on the emulated kernels ------------------------------------------------------------


def separated(seed, b, n, c, x_dtype):
    """Tokens in 6 groups whose centres lie 32-128 apart, within ±1 of them, weights in [0.5, 1.5): no two
    distances or costs are within rounding of each other, so the kernels must choose the reference's tokens, and
    compute the same k-means means, bit for bit."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(b, 6, c, generator=g) * 64
    groups = torch.randint(0, 6, (b, n, 1), generator=g).expand(b, n, c)
    x = centres.gather(1, groups) + torch.rand(b, n, c, generator=g) * 2 - 1
    return x.to(x_dtype), torch.rand(b, n, generator=g) + 0.5


ENQUEUE_SHAPES = [(1, 1, 1, 1, 2), (2, 16, 8, 5, 3), (3, 50, 24, 7, 4), (2, 130, 40, 30, 5)]  # B, N, C, K, T


@pytest.mark.parametrize("x_dtype", [F32, F16], ids=["x32", "x16"])
@pytest.mark.parametrize("weighted", [True, False], ids=["w", "unw"])
@pytest.mark.parametrize("mode", ["kmedoids", "kmeans"])
def test_enqueue_equals_the_reference_bit_for_bit(lib, mode, weighted, x_dtype):
    for case, (b, n, c, k, t) in enumerate(ENQUEUE_SHAPES):
        x, w = separated(case, b, n, c, x_dtype)
        core = Core(lib, attribute_fields(k, t, mode, weighted))
        assert core.shape_change([b, n, c], [b, n], TYPES[x_dtype]) == (SUCCESS, "")
        # the workspace sized, as TensorRT does, for a larger profile max
        workspace = torch.full((core.workspace([b + 1, n + 3, c + 5], TYPES[x_dtype]),), 0xFF, dtype=torch.uint8)
        y = torch.full((b, k, c), float("nan"), dtype=x_dtype)
        lib.emuSetSchedule(case)
        status, message = core.enqueue(x, w, y, workspace)
        assert status == SUCCESS, f"{message}: {lib.emuLastFault().decode()}"
        want = token_pool(x, w, k, t, mode, weighted)
        assert torch.equal(bits(y), bits(want)), (mode, weighted, x_dtype, b, n, c, k, t)


def test_enqueue_of_an_empty_output_writes_nothing(lib):
    core = Core(lib, attribute_fields(3))
    for x_shape in ([0, 5, 4], [2, 5, 0]):
        x = torch.zeros(x_shape)
        assert core.enqueue(x, torch.zeros(x_shape[:2]), None, None) == (SUCCESS, "")


@pytest.mark.parametrize(
    "change,message",
    [
        (
            {"x": None},
            "kernel launch failed for X [2, 50, 24]: invalid value: params outside the TokenPool definition "
            "(sizes >= 1, 1 <= K <= N, T >= 0, known mode and data types, weighted 0 or 1) or a null or "
            "misaligned pointer",
        ),
        ({"y": None}, "kernel launch failed for X [2, 50, 24]: invalid value"),
        ({"workspace": None}, "kernel launch failed for X [2, 50, 24]: invalid value"),
        ({"w": 2}, "kernel launch failed for X [2, 50, 24]: invalid value"),  # float32 W off its 4-byte alignment
        (
            {"x_shape": [2, 1025, 24]},
            "kernel launch failed for X [2, 1025, 24]: unsupported: the TokenPool kernels take N <= 1024 tokens",
        ),
        ({"x_shape": [2, 4, 24]}, "kernel launch failed for X [2, 4, 24]: invalid value"),  # K = 7 > N
        ({"w_type": HALF}, "X must be float32 or float16 and W float32, got X float32 and W float16"),
        ({"x_shape": [2, 50]}, "X must be [B, N, C] with extents in [0, 2^31), got [2, 50]"),
        ({"x_shape": [2**31, 50, 24]}, "X must be [B, N, C] with extents in [0, 2^31), got [2147483648, 50, 24]"),
    ],
)
def test_enqueue_errors_come_back_as_the_cores_status_and_message(lib, change, message):
    core = Core(lib, attribute_fields(7))
    x, w = separated(0, 2, 50, 24, F32)
    y = torch.zeros(2, 7, 24)
    workspace = torch.zeros(core.workspace([2, 50, 24], FLOAT), dtype=torch.uint8)
    args = {
        "x_shape": [2, 50, 24],
        "x_type": FLOAT,
        "w_type": FLOAT,
        "x": x.data_ptr(),
        "w": w.data_ptr(),
        "y": y.data_ptr(),
        "workspace": workspace.data_ptr(),
    }
    if "w" in change:
        change = {"w": args["w"] + change["w"]}
    status, got = core.enqueue_pointers(**{**args, **change})
    assert status == INVALID_ARGUMENT and got.startswith(message), got
    assert not y.any()  # refused before any kernel ran
