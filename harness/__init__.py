"""What the tests and the benchmarks share, outside the package (neither imports the other's files for it):

serving.py        `tpdeploy serve` in a child process, as an operator runs it; free ports; a fault-injecting runner
plugins_build.py  the CMake build of plugins/ for one GPU architecture
cuda_emulator/    the unmodified CUDA kernels built for the CPU with g++ (no GPU, no CUDA toolkit)
"""
