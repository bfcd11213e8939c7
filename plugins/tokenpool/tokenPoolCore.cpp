/*
 * tpdeploy: the TensorRT-free core of the TokenPool plugin (see tokenPoolCore.h).
 */
#include "tokenPoolCore.h"

#include "tokenPoolKernel.h"

#include <cstring>
#include <limits>
#include <sstream>
#include <utility>

namespace tpdeploy
{
namespace
{

char const* typeName(DataType type) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: return "float32";
    case DataType::kHALF: return "float16";
    case DataType::kBF16: return "bfloat16";
    case DataType::kINT8: return "int8";
    case DataType::kINT32: return "int32";
    case DataType::kINT64: return "int64";
    case DataType::kOTHER: break;
    }
    return "an unsupported type";
}

std::string dimsString(Dims const& dims)
{
    std::ostringstream os;
    os << '[';
    for (int32_t i = 0; i < dims.nbDims && i < kMAX_DIMS; ++i)
    {
        os << (i ? ", " : "") << dims.d[i];
    }
    os << ']';
    return os.str();
}

Result invalid(std::string message)
{
    return {Status::kINVALID_ARGUMENT, std::move(message)};
}

Result countError(int32_t nbInputs, int32_t nbOutputs)
{
    return invalid(
        "expects 2 inputs (X, W) and 1 output, got " + std::to_string(nbInputs) + " and " + std::to_string(nbOutputs));
}

//! The kernels take float16 W too, but the op's contract keeps significance in float32.
bool typesSupported(DataType x, DataType w) noexcept
{
    return (x == DataType::kFLOAT || x == DataType::kHALF) && w == DataType::kFLOAT;
}

Result typeError(DataType x, DataType w)
{
    return invalid(
        std::string("X must be float32 or float16 and W float32, got X ") + typeName(x) + " and W " + typeName(w));
}

bool fitsInt(int64_t value) noexcept
{
    return value >= 0 && value <= std::numeric_limits<int>::max();
}

//! The launcher's params for X [B, N, C] with concrete extents.
Result makeParams(Attributes const& attributes, Dims const& x, DataType xType, DataType wType, tpParams& params)
{
    if (!typesSupported(xType, wType))
    {
        return typeError(xType, wType);
    }
    if (x.nbDims != 3 || !fitsInt(x.d[0]) || !fitsInt(x.d[1]) || !fitsInt(x.d[2]))
    {
        return invalid("X must be [B, N, C] with extents in [0, 2^31), got " + dimsString(x));
    }
    params = tpParams{};
    params.batch = static_cast<int>(x.d[0]);
    params.tokens = static_cast<int>(x.d[1]);
    params.channels = static_cast<int>(x.d[2]);
    params.clusters = attributes.numClusters;
    params.iterations = attributes.iterations;
    params.mode = attributes.mode == "kmeans" ? TP_KMEANS : TP_KMEDOIDS;
    params.weighted = attributes.weighted;
    params.x_type = xType == DataType::kHALF ? TP_FLOAT16 : TP_FLOAT32;
    params.w_type = TP_FLOAT32;
    return {};
}

Result readInt(Field const& field, int32_t& out)
{
    if (field.data != nullptr && field.length == 1)
    {
        if (field.type == FieldType::kINT32)
        {
            out = *static_cast<int32_t const*>(field.data);
            return {};
        }
        if (field.type == FieldType::kINT64)
        {
            int64_t const value = *static_cast<int64_t const*>(field.data);
            if (value >= std::numeric_limits<int32_t>::min() && value <= std::numeric_limits<int32_t>::max())
            {
                out = static_cast<int32_t>(value);
                return {};
            }
        }
    }
    return invalid(
        std::string("plugin field '") + field.name + "' must be one kINT32 (or kINT64) value in int32 range");
}

Result readString(Field const& field, std::string& out)
{
    if (field.type != FieldType::kCHAR || field.data == nullptr || field.length < 1)
    {
        return invalid(std::string("plugin field '") + field.name + "' must be a kCHAR string");
    }
    // The ONNX parser passes the characters plus a terminating NUL (length counts it); other callers may not.
    char const* chars = static_cast<char const*>(field.data);
    out.assign(chars, strnlen(chars, static_cast<size_t>(field.length)));
    return {};
}

Result validate(Attributes const& attributes)
{
    if (attributes.numClusters < 1)
    {
        return invalid("num_clusters must be >= 1, got " + std::to_string(attributes.numClusters));
    }
    if (attributes.iterations < 0)
    {
        return invalid("iterations must be >= 0, got " + std::to_string(attributes.iterations));
    }
    if (attributes.mode != "kmedoids" && attributes.mode != "kmeans")
    {
        return invalid("mode must be 'kmedoids' or 'kmeans', got '" + attributes.mode + "'");
    }
    if (attributes.weighted != 0 && attributes.weighted != 1)
    {
        return invalid("weighted must be 0 or 1, got " + std::to_string(attributes.weighted));
    }
    return {};
}

}  // namespace

std::vector<Field> fieldList(Attributes const* values)
{
    auto at = [values](void const* member) { return values != nullptr ? member : nullptr; };
    Attributes const none;
    Attributes const& a = values != nullptr ? *values : none;
    // mode with its NUL, as the ONNX parser passes strings
    int32_t const modeLength = values != nullptr ? static_cast<int32_t>(a.mode.size() + 1) : 0;
    return {{"num_clusters", at(&a.numClusters), FieldType::kINT32, 1},
        {"iterations", at(&a.iterations), FieldType::kINT32, 1},
        {"mode", at(a.mode.c_str()), FieldType::kCHAR, modeLength},
        {"weighted", at(&a.weighted), FieldType::kINT32, 1}};
}

Result parseFields(Field const* fields, int32_t nbFields, Attributes& attributes, std::vector<std::string>& warnings)
{
    bool haveClusters = false;
    for (int32_t i = 0; fields != nullptr && i < nbFields; ++i)
    {
        Field const& field = fields[i];
        if (field.name == nullptr)
        {
            continue;
        }
        std::string const name = field.name;
        Result read;
        if (name == "num_clusters")
        {
            read = readInt(field, attributes.numClusters);
            haveClusters = true;
        }
        else if (name == "iterations")
        {
            read = readInt(field, attributes.iterations);
        }
        else if (name == "weighted")
        {
            read = readInt(field, attributes.weighted);
        }
        else if (name == "mode")
        {
            read = readString(field, attributes.mode);
        }
        else if (name != "plugin_version" && name != "plugin_namespace")
        {
            warnings.push_back("ignoring unknown plugin field '" + name + "'");
        }
        if (!read.ok())
        {
            return read;
        }
    }
    if (!haveClusters)
    {
        return invalid("plugin field 'num_clusters' is required");
    }
    return validate(attributes);
}

TokenPoolCore::TokenPoolCore(Attributes attributes)
    : mAttributes(std::move(attributes))
{
    std::ostringstream id;
    id << kTOKEN_POOL_NAMESPACE << "::" << kTOKEN_POOL_NAME << '/' << kTOKEN_POOL_VERSION
       << ";K=" << mAttributes.numClusters << ";T=" << mAttributes.iterations << ";mode=" << mAttributes.mode
       << ";weighted=" << mAttributes.weighted;
    mTimingCacheId = id.str();
    std::ostringstream meta;
    meta << "num_clusters=" << mAttributes.numClusters << " iterations=" << mAttributes.iterations
         << " mode=" << mAttributes.mode << " weighted=" << mAttributes.weighted;
    mMetadata = meta.str();
}

std::vector<Field> TokenPoolCore::serialFields() const
{
    return fieldList(&mAttributes);
}

Result TokenPoolCore::checkDims(Dims const& x, Dims const& w) const
{
    if (x.nbDims != 3 || w.nbDims != 2)
    {
        return invalid("X must be [B, N, C] and W [B, N], got X " + dimsString(x) + " and W " + dimsString(w));
    }
    for (int32_t i = 0; i < 2; ++i)
    {
        if (x.d[i] >= 0 && w.d[i] >= 0 && x.d[i] != w.d[i])
        {
            return invalid(
                "W must be [B, N] = [X.shape[0], X.shape[1]], got X " + dimsString(x) + " and W " + dimsString(w));
        }
    }
    int64_t const n = x.d[1] >= 0 ? x.d[1] : w.d[1];
    if (n >= 0 && n < mAttributes.numClusters)
    {
        return invalid("num_clusters K=" + std::to_string(mAttributes.numClusters)
            + " exceeds the number of tokens N=" + std::to_string(n) + " (X " + dimsString(x) + "); K must be <= N");
    }
    return {};
}

Result TokenPoolCore::outputTypes(DataType const* inputs, int32_t nbInputs, DataType* outputs, int32_t nbOutputs) const
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return countError(nbInputs, nbOutputs);
    }
    if (!typesSupported(inputs[0], inputs[1]))
    {
        return typeError(inputs[0], inputs[1]);
    }
    outputs[0] = inputs[0];
    return {};
}

Result TokenPoolCore::outputShapes(Dims const* inputs, int32_t nbInputs, OutputShape* outputs, int32_t nbOutputs) const
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return countError(nbInputs, nbOutputs);
    }
    Result const dims = checkDims(inputs[0], inputs[1]);
    if (!dims.ok())
    {
        return dims;
    }
    outputs[0] = OutputShape{};
    outputs[0].nbDims = 3;
    outputs[0].d[0].fromX = 0;
    outputs[0].d[1].value = mAttributes.numClusters;
    outputs[0].d[2].fromX = 2;
    return {};
}

bool TokenPoolCore::supportsFormatCombination(
    int32_t pos, DynamicTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) const noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= 3 || inOut[pos].desc.format != Format::kLINEAR)
    {
        return false;
    }
    DataType const type = inOut[pos].desc.type;
    switch (pos)
    {
    case 0: return type == DataType::kFLOAT || type == DataType::kHALF;
    case 1: return type == DataType::kFLOAT;
    default: return type == inOut[0].desc.type;
    }
}

Result TokenPoolCore::configure(DynamicTensorDesc const* inputs, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return countError(nbInputs, nbOutputs);
    }
    for (Result dims : {checkDims(inputs[0].min, inputs[1].min), checkDims(inputs[0].max, inputs[1].max)})
    {
        if (!dims.ok())
        {
            dims.message += " (optimization profile min/max)";
            return dims;
        }
    }
    tpParams params{};
    Result const made = makeParams(mAttributes, inputs[0].max, inputs[0].desc.type, inputs[1].desc.type, params);
    if (!made.ok())
    {
        return made;
    }
    tpStatus const status = tokenPoolValidate(&params);
    if (status != TP_SUCCESS)
    {
        return {Status::kINVALID_CONFIG,
            "the profile's largest input X " + dimsString(inputs[0].max)
                + " is not supported by the kernel: " + tokenPoolStatusString(status)};
    }
    return {};
}

size_t TokenPoolCore::workspaceSize(DynamicTensorDesc const* inputs, int32_t nbInputs) const
{
    tpParams params{};
    if (nbInputs != 2 || !checkDims(inputs[0].max, inputs[1].max).ok()
        || !makeParams(mAttributes, inputs[0].max, inputs[0].desc.type, inputs[1].desc.type, params).ok())
    {
        return 0;
    }
    return tokenPoolWorkspaceSize(&params);
}

Result TokenPoolCore::shapeChange(TensorDesc const* inputs, int32_t nbInputs, int32_t nbOutputs) const
{
    if (nbInputs != 2 || nbOutputs != 1)
    {
        return countError(nbInputs, nbOutputs);
    }
    Result result = checkDims(inputs[0].dims, inputs[1].dims);
    tpParams params{};
    if (result.ok())
    {
        result = makeParams(mAttributes, inputs[0].dims, inputs[0].type, inputs[1].type, params);
    }
    if (!result.ok())
    {
        return result;
    }
    tpStatus const status = tokenPoolValidate(&params);
    if (status != TP_SUCCESS)
    {
        return invalid("input X " + dimsString(inputs[0].dims)
            + " is not supported by the kernel: " + tokenPoolStatusString(status));
    }
    return {};
}

Result TokenPoolCore::enqueue(TensorDesc const* inputs, void const* const* inputData, void* const* outputData,
    void* workspace, cudaStream_t stream) const
{
    Dims const& x = inputs[0].dims;
    if (x.nbDims == 3 && (x.d[0] == 0 || x.d[2] == 0))
    {
        return {};  // an empty Y: nothing to write
    }
    tpParams params{};
    Result const made = makeParams(mAttributes, x, inputs[0].type, inputs[1].type, params);
    if (!made.ok())
    {
        return made;
    }
    tpStatus const status = tokenPoolLaunch(&params, inputData[0], inputData[1], outputData[0], workspace, stream);
    if (status != TP_SUCCESS)
    {
        return {status == TP_ERROR_CUDA ? Status::kFAILED_EXECUTION : Status::kINVALID_ARGUMENT,
            "kernel launch failed for X " + dimsString(x) + ": " + tokenPoolStatusString(status)};
    }
    return {};
}

}  // namespace tpdeploy
