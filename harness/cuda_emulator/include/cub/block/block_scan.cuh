// cub::BlockScan<T, BLOCK_THREADS>::ExclusiveSum for one-dimensional blocks. Like CUB's, it does not end with a
// barrier: a caller that reuses the TempStorage must synchronise first, and the emulator will show if it does not.
#pragma once
#include "../../../emulator.h"

namespace cub
{

template <class T, int BLOCK_THREADS>
class BlockScan
{
public:
    struct TempStorage
    {
        T item[BLOCK_THREADS];
    };
    explicit BlockScan(TempStorage& storage)
        : storage_(storage)
    {
    }

    void ExclusiveSum(T input, T& output)
    {
        if (blockDim.x != BLOCK_THREADS || blockDim.y != 1 || blockDim.z != 1)
            emu::fault("cub::BlockScan: the block does not have BLOCK_THREADS threads");
        storage_.item[threadIdx.x] = input;
        __syncthreads();
        T sum = T();
        for (unsigned i = 0; i < threadIdx.x; ++i) sum += storage_.item[i];
        output = sum;
    }

private:
    TempStorage& storage_;
};

}  // namespace cub
