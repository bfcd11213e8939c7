// Stands in for the CUDA runtime header when the kernels are compiled by g++ (see ../README.md).
#pragma once
#include "../emulator.h"
