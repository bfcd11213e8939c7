/*
 * tpdeploy: the IPluginV3 shim of the TokenPool plugin (see tokenPoolPlugin.h). Each method translates TensorRT's
 * arguments into tokenPoolCore.h's structs, calls the core, and translates or reports the result.
 *
 * Method contracts are those of the TensorRT 10.x/11.x headers (NvInferRuntime.h, NvInferPluginBase.h) and the
 * developer guide's "Plugin API Description" page:
 * https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/plugins-api-migration.html
 */
#include "tokenPoolPlugin.h"

#include "tokenPoolRegistration.h"

#include <algorithm>
#include <exception>
#include <utility>

using namespace nvinfer1;

namespace tpdeploy
{
namespace
{

// --- TensorRT -> core ---------------------------------------------------------------------------------------------
tpdeploy::DataType toCore(nvinfer1::DataType type) noexcept
{
    switch (type)
    {
    case nvinfer1::DataType::kFLOAT: return tpdeploy::DataType::kFLOAT;
    case nvinfer1::DataType::kHALF: return tpdeploy::DataType::kHALF;
    case nvinfer1::DataType::kBF16: return tpdeploy::DataType::kBF16;
    case nvinfer1::DataType::kINT8: return tpdeploy::DataType::kINT8;
    case nvinfer1::DataType::kINT32: return tpdeploy::DataType::kINT32;
    case nvinfer1::DataType::kINT64: return tpdeploy::DataType::kINT64;
    default: return tpdeploy::DataType::kOTHER;
    }
}

tpdeploy::Dims toCore(nvinfer1::Dims const& dims) noexcept
{
    tpdeploy::Dims out;
    out.nbDims = dims.nbDims;
    std::copy_n(dims.d, std::clamp(dims.nbDims, 0, kMAX_DIMS), out.d);
    return out;
}

//! Constant extents by value, the others -1.
tpdeploy::Dims toCore(DimsExprs const& dims) noexcept
{
    tpdeploy::Dims out;
    out.nbDims = dims.nbDims;
    for (int32_t i = 0; i < std::clamp(dims.nbDims, 0, kMAX_DIMS); ++i)
    {
        out.d[i] = dims.d[i]->isConstant() ? dims.d[i]->getConstantValue() : -1;
    }
    return out;
}

TensorDesc toCore(PluginTensorDesc const& desc) noexcept
{
    return {
        toCore(desc.dims), toCore(desc.type), desc.format == TensorFormat::kLINEAR ? Format::kLINEAR : Format::kOTHER};
}

DynamicTensorDesc toCore(DynamicPluginTensorDesc const& desc) noexcept
{
    return {toCore(desc.desc), toCore(desc.min), toCore(desc.max)};
}

Field toCore(PluginField const& field) noexcept
{
    FieldType type = FieldType::kOTHER;
    switch (field.type)
    {
    case PluginFieldType::kINT32: type = FieldType::kINT32; break;
    case PluginFieldType::kINT64: type = FieldType::kINT64; break;
    case PluginFieldType::kCHAR: type = FieldType::kCHAR; break;
    default: break;
    }
    return {field.name, field.data, type, field.length};
}

//! items[0 .. count) translated one by one.
template <typename T>
auto toCore(T const* items, int32_t count) -> std::vector<decltype(toCore(*items))>
{
    std::vector<decltype(toCore(*items))> out;
    for (int32_t i = 0; items != nullptr && i < count; ++i)
    {
        out.push_back(toCore(items[i]));
    }
    return out;
}

// --- core -> TensorRT ---------------------------------------------------------------------------------------------
//! The inverse of toCore (outputTypes() never gives kOTHER).
nvinfer1::DataType toTrt(tpdeploy::DataType type) noexcept
{
    switch (type)
    {
    case tpdeploy::DataType::kHALF: return nvinfer1::DataType::kHALF;
    case tpdeploy::DataType::kBF16: return nvinfer1::DataType::kBF16;
    case tpdeploy::DataType::kINT8: return nvinfer1::DataType::kINT8;
    case tpdeploy::DataType::kINT32: return nvinfer1::DataType::kINT32;
    case tpdeploy::DataType::kINT64: return nvinfer1::DataType::kINT64;
    case tpdeploy::DataType::kFLOAT:
    case tpdeploy::DataType::kOTHER: break;
    }
    return nvinfer1::DataType::kFLOAT;
}

ErrorCode toTrt(Status status) noexcept
{
    switch (status)
    {
    case Status::kINVALID_CONFIG: return ErrorCode::kINVALID_CONFIG;
    case Status::kFAILED_EXECUTION: return ErrorCode::kFAILED_EXECUTION;
    default: return ErrorCode::kINVALID_ARGUMENT;
    }
}

std::vector<PluginField> toTrt(std::vector<Field> const& fields)
{
    std::vector<PluginField> out;
    for (Field const& field : fields)
    {
        PluginFieldType type = PluginFieldType::kUNKNOWN;
        switch (field.type)
        {
        case FieldType::kINT32: type = PluginFieldType::kINT32; break;
        case FieldType::kINT64: type = PluginFieldType::kINT64; break;
        case FieldType::kCHAR: type = PluginFieldType::kCHAR; break;
        case FieldType::kOTHER: break;
        }
        out.emplace_back(field.name, field.data, type, field.length);
    }
    return out;
}

}  // namespace

// =================================================================================================================
// TokenPoolPlugin
// =================================================================================================================
TokenPoolPlugin::TokenPoolPlugin(std::string layerName, Attributes attributes)
    : mLayerName(std::move(layerName))
    , mCore(std::move(attributes))
{
}

// IPluginV3::getCapabilityInterface (NvInferPluginBase.h): a build-phase object must expose core, build and runtime.
IPluginCapability* TokenPoolPlugin::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
}

// IPluginV3::clone (NvInferPluginBase.h): a fully initialised copy, nullptr on failure.
IPluginV3* TokenPoolPlugin::clone() noexcept
{
    try
    {
        auto* plugin = new TokenPoolPlugin(mLayerName, mCore.attributes());
        plugin->mErrorRecorder = mErrorRecorder;
        return plugin;
    }
    catch (...)
    {
        return nullptr;
    }
}

// IPluginV3OneCore (NvInferRuntime.h): must match the creator's name, version and namespace.
char const* TokenPoolPlugin::getPluginName() const noexcept
{
    return kTOKEN_POOL_NAME;
}

char const* TokenPoolPlugin::getPluginVersion() const noexcept
{
    return kTOKEN_POOL_VERSION;
}

char const* TokenPoolPlugin::getPluginNamespace() const noexcept
{
    return kTOKEN_POOL_NAMESPACE;
}

// IPluginV3OneBuild::configurePlugin (NvInferRuntime.h): per profile, with its min/opt/max; non-zero fails the build.
int32_t TokenPoolPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        return report(mCore.configure(toCore(in, nbInputs).data(), nbInputs, nbOutputs));
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneBuild::getOutputDataTypes (NvInferRuntime.h).
int32_t TokenPoolPlugin::getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
    nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        std::vector<tpdeploy::DataType> types = toCore(inputTypes, nbInputs);
        std::vector<tpdeploy::DataType> outTypes(std::max(nbOutputs, 0));
        Result const result = mCore.outputTypes(types.data(), nbInputs, outTypes.data(), nbOutputs);
        for (int32_t o = 0; result.ok() && o < nbOutputs; ++o)
        {
            outputTypes[o] = toTrt(outTypes[o]);
        }
        return report(result);
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneBuild::getOutputShapes (NvInferRuntime.h): each output extent is an input expression of X or a constant.
int32_t TokenPoolPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        std::vector<tpdeploy::Dims> dims = toCore(inputs, nbInputs);
        std::vector<OutputShape> shapes(std::max(nbOutputs, 0));
        Result const result = mCore.outputShapes(dims.data(), nbInputs, shapes.data(), nbOutputs);
        for (int32_t o = 0; result.ok() && o < nbOutputs; ++o)
        {
            outputs[o].nbDims = shapes[o].nbDims;
            for (int32_t i = 0; i < shapes[o].nbDims; ++i)
            {
                OutputExtent const& extent = shapes[o].d[i];
                outputs[o].d[i] = extent.fromX >= 0 ? inputs[0].d[extent.fromX] : exprBuilder.constant(extent.value);
            }
        }
        return report(result);
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneBuild::supportsFormatCombination (NvInferRuntime.h): decide pos from inOut[0..pos] only.
bool TokenPoolPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    try
    {
        return mCore.supportsFormatCombination(pos, toCore(inOut, nbInputs + nbOutputs).data(), nbInputs, nbOutputs);
    }
    catch (...)
    {
        return false;
    }
}

int32_t TokenPoolPlugin::getNbOutputs() const noexcept
{
    return 1;
}

// IPluginV3OneBuild::getWorkspaceSize (NvInferRuntime.h): enough for the profile's max dims "or any smaller problem".
size_t TokenPoolPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        return mCore.workspaceSize(toCore(inputs, nbInputs).data(), nbInputs);
    }
    catch (...)
    {
        return 0;
    }
}

// IPluginV3OneBuild::getTimingCacheID (NvInferRuntime.h): creation state only; TensorRT adds I/O shapes and formats.
char const* TokenPoolPlugin::getTimingCacheID() noexcept
{
    return mCore.timingCacheId().c_str();
}

// IPluginV3OneBuild::getMetadataString (NvInferRuntime.h): attribute values, shown in engine inspection.
char const* TokenPoolPlugin::getMetadataString() noexcept
{
    return mCore.metadata().c_str();
}

// IPluginV3OneRuntime::onShapeChange (NvInferRuntime.h): the concrete shapes before enqueue.
int32_t TokenPoolPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        return report(mCore.shapeChange(toCore(in, nbInputs).data(), nbInputs, nbOutputs));
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneRuntime::enqueue (NvInferRuntime.h): one launcher call on TensorRT's stream; non-zero on failure.
int32_t TokenPoolPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const* /*outputDesc*/,
    void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept
{
    try
    {
        TensorDesc const in[2] = {toCore(inputDesc[0]), toCore(inputDesc[1])};
        return report(mCore.enqueue(in, inputs, outputs, workspace, stream));
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneRuntime::attachToContext (NvInferRuntime.h): clone the whole plugin for one execution context and keep
// that context's error recorder (IPluginResourceContext::getErrorRecorder).
IPluginV3* TokenPoolPlugin::attachToContext(IPluginResourceContext* context) noexcept
{
    auto* plugin = static_cast<TokenPoolPlugin*>(clone());
    if (plugin != nullptr)
    {
        plugin->mErrorRecorder = context != nullptr ? context->getErrorRecorder() : nullptr;
    }
    return plugin;
}

// IPluginV3OneRuntime::getFieldsToSerialize (NvInferRuntime.h): what TensorRT stores in the engine and later hands to
// createPlugin(..., TensorRTPhase::kRUNTIME). The pointers stay valid while this plugin lives.
PluginFieldCollection const* TokenPoolPlugin::getFieldsToSerialize() noexcept
{
    try
    {
        mSerialFields = toTrt(mCore.serialFields());
        mSerialFieldCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialFieldCollection.fields = mSerialFields.data();
        return &mSerialFieldCollection;
    }
    catch (...)
    {
        return nullptr;
    }
}

int32_t TokenPoolPlugin::report(Result const& result) const noexcept
{
    if (result.ok())
    {
        return 0;
    }
    try
    {
        std::string const text = "TokenPool layer '" + mLayerName + "': " + result.message;
        if (mErrorRecorder != nullptr)
        {
            mErrorRecorder->reportError(toTrt(result.status), text.c_str());  // IErrorRecorder (NvInferRuntimeBase.h)
        }
        else
        {
            logMessage(ILogger::Severity::kERROR, text);
        }
    }
    catch (...)
    {
    }
    return -1;
}

// =================================================================================================================
// TokenPoolPluginCreator
// =================================================================================================================
TokenPoolPluginCreator::TokenPoolPluginCreator()
    : mFieldNames(toTrt(fieldList(nullptr)))
{
    mFieldCollection.nbFields = static_cast<int32_t>(mFieldNames.size());
    mFieldCollection.fields = mFieldNames.data();
}

// IPluginCreatorV3One::createPlugin (NvInferRuntime.h): from ONNX attributes (kBUILD) or from getFieldsToSerialize()
// (kRUNTIME); the same parser serves both. nullptr (with a logged reason) on bad fields.
IPluginV3* TokenPoolPluginCreator::createPlugin(
    char const* name, PluginFieldCollection const* fc, TensorRTPhase /*phase*/) noexcept
{
    try
    {
        std::string const layer = name != nullptr ? name : "";
        std::vector<Field> const fields = fc != nullptr ? toCore(fc->fields, fc->nbFields) : std::vector<Field>{};
        Attributes attributes;
        std::vector<std::string> warnings;
        Result const parsed = parseFields(fields.data(), static_cast<int32_t>(fields.size()), attributes, warnings);
        for (std::string const& warning : warnings)
        {
            logMessage(ILogger::Severity::kWARNING, "layer '" + layer + "': " + warning);
        }
        if (!parsed.ok())
        {
            logMessage(ILogger::Severity::kERROR, "layer '" + layer + "': " + parsed.message);
            return nullptr;
        }
        return new TokenPoolPlugin(layer, std::move(attributes));
    }
    catch (std::exception const& e)
    {
        logMessage(ILogger::Severity::kERROR, std::string("createPlugin failed: ") + e.what());
        return nullptr;
    }
    catch (...)
    {
        return nullptr;
    }
}

PluginFieldCollection const* TokenPoolPluginCreator::getFieldNames() noexcept
{
    return &mFieldCollection;
}

char const* TokenPoolPluginCreator::getPluginName() const noexcept
{
    return kTOKEN_POOL_NAME;
}

char const* TokenPoolPluginCreator::getPluginVersion() const noexcept
{
    return kTOKEN_POOL_VERSION;
}

char const* TokenPoolPluginCreator::getPluginNamespace() const noexcept
{
    return kTOKEN_POOL_NAMESPACE;
}

}  // namespace tpdeploy
