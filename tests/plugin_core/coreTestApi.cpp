// A C API over the TensorRT plugin's core (plugins/tokenpool/tokenPoolCore.h) for tests/test_plugin_core.py, which
// loads it with ctypes. tests/cuda_emulator/build.py compiles it with the core and the emulated kernels into one
// library. The core's structs are standard-layout and cross as they are; results come back as the Status code, with
// the message copied into the caller's buffer.
#include "tokenPoolCore.h"

#include <cstdio>

using namespace tpdeploy;

namespace
{

void copyText(std::string const& text, char* buffer, size_t size)
{
    if (buffer != nullptr && size > 0)
    {
        std::snprintf(buffer, size, "%s", text.c_str());
    }
}

int32_t finish(Result const& result, char* message, size_t size)
{
    copyText(result.message, message, size);
    return static_cast<int32_t>(result.status);
}

}  // namespace

extern "C"
{

    //! parseFields(); a new core when they are valid (free it with tpcDestroy), else null. Warnings are joined by
    //! newlines.
    TokenPoolCore* tpcCreate(Field const* fields, int32_t nbFields, int32_t* status, char* message, size_t messageSize,
        char* warnings, size_t warningsSize)
    {
        Attributes attributes;
        std::vector<std::string> found;
        Result const result = parseFields(fields, nbFields, attributes, found);
        *status = finish(result, message, messageSize);
        std::string joined;
        for (std::string const& warning : found)
        {
            joined += (joined.empty() ? "" : "\n") + warning;
        }
        copyText(joined, warnings, warningsSize);
        return result.ok() ? new TokenPoolCore(attributes) : nullptr;
    }

    void tpcDestroy(TokenPoolCore* core)
    {
        delete core;
    }

    void tpcAttributes(TokenPoolCore const* core, int32_t* numClusters, int32_t* iterations, char* mode,
        size_t modeSize, int32_t* weighted)
    {
        Attributes const& a = core->attributes();
        *numClusters = a.numClusters;
        *iterations = a.iterations;
        copyText(a.mode, mode, modeSize);
        *weighted = a.weighted;
    }

    void tpcStrings(TokenPoolCore const* core, char* timingCacheId, char* metadata, size_t size)
    {
        copyText(core->timingCacheId(), timingCacheId, size);
        copyText(core->metadata(), metadata, size);
    }

    //! core's serialFields() (pointing into it), or without a core the creator's fieldList(nullptr); returns the
    //! number of fields, of which the first `capacity` are copied.
    int32_t tpcFields(TokenPoolCore const* core, Field* out, int32_t capacity)
    {
        std::vector<Field> const fields = core != nullptr ? core->serialFields() : fieldList(nullptr);
        for (int32_t i = 0; i < capacity && i < static_cast<int32_t>(fields.size()); ++i)
        {
            out[i] = fields[i];
        }
        return static_cast<int32_t>(fields.size());
    }

    int32_t tpcOutputTypes(TokenPoolCore const* core, DataType const* inputs, int32_t nbInputs, DataType* outputs,
        int32_t nbOutputs, char* message, size_t size)
    {
        return finish(core->outputTypes(inputs, nbInputs, outputs, nbOutputs), message, size);
    }

    int32_t tpcOutputShapes(TokenPoolCore const* core, Dims const* inputs, int32_t nbInputs, OutputShape* outputs,
        int32_t nbOutputs, char* message, size_t size)
    {
        return finish(core->outputShapes(inputs, nbInputs, outputs, nbOutputs), message, size);
    }

    bool tpcSupportsFormatCombination(
        TokenPoolCore const* core, int32_t pos, DynamicTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs)
    {
        return core->supportsFormatCombination(pos, inOut, nbInputs, nbOutputs);
    }

    int32_t tpcConfigure(TokenPoolCore const* core, DynamicTensorDesc const* inputs, int32_t nbInputs,
        int32_t nbOutputs, char* message, size_t size)
    {
        return finish(core->configure(inputs, nbInputs, nbOutputs), message, size);
    }

    size_t tpcWorkspaceSize(TokenPoolCore const* core, DynamicTensorDesc const* inputs, int32_t nbInputs)
    {
        return core->workspaceSize(inputs, nbInputs);
    }

    int32_t tpcShapeChange(TokenPoolCore const* core, TensorDesc const* inputs, int32_t nbInputs, int32_t nbOutputs,
        char* message, size_t size)
    {
        return finish(core->shapeChange(inputs, nbInputs, nbOutputs), message, size);
    }

    int32_t tpcEnqueue(TokenPoolCore const* core, TensorDesc const* inputs, void const* const* inputData,
        void* const* outputData, void* workspace, char* message, size_t size)
    {
        return finish(core->enqueue(inputs, inputData, outputData, workspace, nullptr), message, size);
    }
}
