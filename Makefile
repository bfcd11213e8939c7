# Two commands do all set-up on a fresh machine:
#   make demo   the main job on a built-in default (Token-Pooled DeiT-S -> ONNX, validated, benchmarked)
#   make test   the test suite
PYTHON ?= python3
VENV   ?= .venv
# torch is installed first so that pip does not pick a multi-GB CUDA build for `torch>=2.8`;
# on a GPU machine use e.g. TORCH="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
BUILD  ?= build

.PHONY: demo test plugins gpu-check gpu-check-wheels clean

$(BIN)/tpdeploy: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(BIN)/tpdeploy
	mkdir -p $(BUILD)
	$(BIN)/tpdeploy export --preset deit_small_058 -o $(BUILD)/deit_small_058.onnx
	$(BIN)/tpdeploy export --arch deit_small --method none -o $(BUILD)/deit_small_dense.onnx
	$(BIN)/tpdeploy compare $(BUILD)/deit_small_058.onnx
	$(BIN)/tpdeploy bench $(BUILD)/deit_small_058.onnx --baseline $(BUILD)/deit_small_dense.onnx \
		--batch 8 --duration 10 --json $(BUILD)/bench.json

test: $(BIN)/tpdeploy
	$(BIN)/python -m pytest -q

# the CUDA kernels (nvcc) and, where TensorRT is found (TENSORRT_ROOT=...), the TensorRT plugin
plugins:
	cmake -S plugins -B $(BUILD)/plugins $(if $(TENSORRT_ROOT),-DTENSORRT_ROOT=$(TENSORRT_ROOT)) \
		&& cmake --build $(BUILD)/plugins -j

# on a GPU machine, with the machine's own python3 (no venv, nothing from the network): build, kernels vs the
# reference, timings, pytest's GPU tests, compute-sanitizer, in one table; the log and JSON lines go to $(RESULTS).
# GPU_CHECK_ARGS=--dry-run runs the same on a CPU (the CUDA emulator's kernels standing in).
RESULTS ?= $(or $(OUT),$(BUILD)/gpu-check)
gpu-check:
	$(PYTHON) benchmarks/gpu_check.py --results $(RESULTS) $(GPU_CHECK_ARGS)

# pytest's wheels for a GPU machine without a package index (Python 3.12): take $(BUILD)/gpu-wheels there and
# run `make gpu-check GPU_CHECK_ARGS="--wheels $(BUILD)/gpu-wheels"`
gpu-check-wheels:
	$(PYTHON) -m pip download -q --only-binary=:all: --python-version 3.12 -d $(BUILD)/gpu-wheels pytest

clean:
	rm -rf $(BUILD)
