/*
 * tpdeploy: TensorRT IPluginV3 plugin for tpdeploy::TokenPool, and the plugin-library entry points.
 * See tokenPoolPlugin.h for the interfaces and README.md ("TensorRT plugin") for building and loading.
 *
 * Method contracts cited below are those of the TensorRT 10.x/11.x headers (NvInferRuntime.h,
 * NvInferPluginBase.h) and the developer guide's "Plugin API Description" page:
 * https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/plugins-api-migration.html
 */
#include "tokenPoolPlugin.h"

#include "tokenPoolKernel.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <new>
#include <sstream>
#include <utility>

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

using namespace nvinfer1;

namespace tpdeploy
{
namespace
{

// ---------------------------------------------------------------------------------------------------------------
// Logging. TensorRT gives a plugin library an ILoggerFinder through setLoggerFinder() (NvInferRuntime.h,
// class ILoggerFinder); initLibTpdeployPlugins() may give an ILogger. Without either, errors go to stderr.
// ---------------------------------------------------------------------------------------------------------------
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};
std::atomic<ILogger*> gLogger{nullptr};

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        ILogger* logger = nullptr;
        if (ILoggerFinder* finder = gLoggerFinder.load())
        {
            logger = finder->findLogger(); // must be called on the thread of the plugin call (it is)
        }
        if (logger == nullptr)
        {
            logger = gLogger.load();
        }
        std::string const text = "[tpdeploy::TokenPool] " + message;
        if (logger != nullptr)
        {
            logger->log(severity, text.c_str());
        }
        else if (severity <= ILogger::Severity::kWARNING)
        {
            std::fprintf(stderr, "%s\n", text.c_str());
        }
    }
    catch (...)
    {
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Helpers between TensorRT descriptors and the launcher's tpParams (tokenPoolKernel.h).
// ---------------------------------------------------------------------------------------------------------------
bool toTpType(DataType type, tpDataType& out) noexcept
{
    switch (type)
    {
    case DataType::kFLOAT: out = TP_FLOAT32; return true;
    case DataType::kHALF: out = TP_FLOAT16; return true;
    default: return false;
    }
}

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
    default: return "an unsupported type";
    }
}

bool fitsInt(int64_t value) noexcept
{
    return value >= 0 && value <= std::numeric_limits<int>::max();
}

//! Fills params for X [b, n, c] (concrete extents); false (and a message) when a type or extent does not fit.
bool makeParams(TokenPoolAttributes const& attributes, int64_t b, int64_t n, int64_t c, DataType xType, DataType wType,
    tpParams& params, std::string& error)
{
    params = tpParams{};
    if (!toTpType(xType, params.x_type) || !toTpType(wType, params.w_type))
    {
        error = std::string("X and W must be float32 or float16, got ") + typeName(xType) + " and " + typeName(wType);
        return false;
    }
    if (!fitsInt(b) || !fitsInt(n) || !fitsInt(c))
    {
        error = "tensor extents out of range";
        return false;
    }
    params.batch = static_cast<int>(b);
    params.tokens = static_cast<int>(n);
    params.channels = static_cast<int>(c);
    params.clusters = attributes.numClusters;
    params.iterations = attributes.iterations;
    params.mode = attributes.mode == "kmeans" ? TP_KMEANS : TP_KMEDOIDS;
    params.weighted = attributes.weighted;
    return true;
}

std::string dimsString(Dims const& dims)
{
    std::ostringstream os;
    os << '[';
    for (int32_t i = 0; i < dims.nbDims; ++i)
    {
        os << (i ? ", " : "") << dims.d[i];
    }
    os << ']';
    return os.str();
}

// ---------------------------------------------------------------------------------------------------------------
// Creator fields (PluginField / PluginFieldCollection: NvInferPluginBase.h).
// ---------------------------------------------------------------------------------------------------------------
bool readInt(PluginField const& field, int32_t& out, std::string& error)
{
    if (field.data != nullptr && field.length >= 1)
    {
        if (field.type == PluginFieldType::kINT32)
        {
            out = *static_cast<int32_t const*>(field.data);
            return true;
        }
        if (field.type == PluginFieldType::kINT64)
        {
            int64_t const value = *static_cast<int64_t const*>(field.data);
            if (value >= std::numeric_limits<int32_t>::min() && value <= std::numeric_limits<int32_t>::max())
            {
                out = static_cast<int32_t>(value);
                return true;
            }
        }
    }
    error = std::string("plugin field '") + field.name + "' must be one kINT32 value";
    return false;
}

bool readString(PluginField const& field, std::string& out, std::string& error)
{
    if (field.type != PluginFieldType::kCHAR || field.data == nullptr || field.length < 1)
    {
        error = std::string("plugin field '") + field.name + "' must be a kCHAR string";
        return false;
    }
    // The ONNX parser passes the characters plus a terminating NUL (length counts it); other callers may not.
    char const* chars = static_cast<char const*>(field.data);
    out.assign(chars, strnlen(chars, static_cast<size_t>(field.length)));
    return true;
}

TokenPoolPluginCreator& creatorInstance()
{
    static TokenPoolPluginCreator creator;
    return creator;
}

// ---------------------------------------------------------------------------------------------------------------
// Optional self-registration (initLibTpdeployPlugins). getPluginRegistry() (NvInferRuntime.h) is looked up at run
// time in the libnvinfer the host process uses, so this library need not link against libnvinfer.
// ---------------------------------------------------------------------------------------------------------------
std::mutex gRegisterMutex;
bool gSelfRegistered{false};

using GetPluginRegistryFn = IPluginRegistry* (*) ();

GetPluginRegistryFn findGetPluginRegistry()
{
#if defined(_WIN32)
    return nullptr; // on Windows, load the library with IPluginRegistry::loadLibrary instead
#else
    void* symbol = dlsym(RTLD_DEFAULT, "getPluginRegistry");
    if (symbol == nullptr)
    {
        // Python extension modules load libnvinfer with RTLD_LOCAL: find it by soname without loading anything.
        std::string const versioned = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
        for (char const* soname : {versioned.c_str(), "libnvinfer.so"})
        {
            if (void* handle = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD))
            {
                symbol = dlsym(handle, "getPluginRegistry");
                dlclose(handle); // drops only the reference RTLD_NOLOAD added
                if (symbol != nullptr)
                {
                    break;
                }
            }
        }
    }
    if (symbol == nullptr)
    {
        // Not loaded yet (e.g. LD_PRELOAD): load it by soname, as a link-time dependency would. It stays loaded, and
        // the host's own later load of the same soname gets this instance (and its registry).
        std::string const versioned = "libnvinfer.so." + std::to_string(NV_TENSORRT_MAJOR);
        if (void* handle = dlopen(versioned.c_str(), RTLD_LAZY | RTLD_GLOBAL))
        {
            symbol = dlsym(handle, "getPluginRegistry");
        }
    }
    return reinterpret_cast<GetPluginRegistryFn>(symbol);
#endif
}

//! TPDEPLOY_TRT_AUTOREGISTER=1: register when the library is loaded, for hosts that only dlopen() it.
struct AutoRegisterOnLoad
{
    AutoRegisterOnLoad()
    {
        char const* value = std::getenv("TPDEPLOY_TRT_AUTOREGISTER");
        if (value != nullptr && std::strcmp(value, "1") == 0)
        {
            initLibTpdeployPlugins(nullptr);
        }
    }
};
AutoRegisterOnLoad const gAutoRegisterOnLoad;

} // namespace

// =================================================================================================================
// TokenPoolPlugin
// =================================================================================================================
TokenPoolPlugin::TokenPoolPlugin(std::string layerName, TokenPoolAttributes attributes)
    : mLayerName(std::move(layerName))
    , mAttributes(std::move(attributes))
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
        auto* plugin = new TokenPoolPlugin(mLayerName, mAttributes);
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

std::string TokenPoolPlugin::checkDims(Dims const& x, Dims const& w) const
{
    if (x.nbDims != 3 || w.nbDims != 2)
    {
        return "X must be [B, N, C] and W [B, N], got X " + dimsString(x) + " and W " + dimsString(w);
    }
    for (int32_t i = 0; i < 2; ++i)
    {
        if (x.d[i] >= 0 && w.d[i] >= 0 && x.d[i] != w.d[i])
        {
            return "W must be [B, N] = [X.shape[0], X.shape[1]], got X " + dimsString(x) + " and W " + dimsString(w);
        }
    }
    if (x.d[1] >= 0 && x.d[1] < mAttributes.numClusters)
    {
        return "num_clusters K=" + std::to_string(mAttributes.numClusters) + " exceeds the number of tokens N="
            + std::to_string(x.d[1]) + " (X " + dimsString(x) + "); K must be <= N";
    }
    return {};
}

// IPluginV3OneBuild::configurePlugin (NvInferRuntime.h): called per profile with its min/opt/max; non-zero fails the
// build. Checks K <= N over the whole profile and that the launcher accepts the profile's largest problem.
int32_t TokenPoolPlugin::configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != 2 || nbOutputs != 1)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "expects 2 inputs (X, W) and 1 output");
            return -1;
        }
        std::string error = checkDims(in[0].min, in[1].min);
        if (error.empty())
        {
            error = checkDims(in[0].max, in[1].max);
        }
        if (!error.empty())
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, error + " (optimization profile min/max)");
            return -1;
        }
        Dims const& xMax = in[0].max;
        tpParams params{};
        if (!makeParams(mAttributes, xMax.d[0], xMax.d[1], xMax.d[2], in[0].desc.type, in[1].desc.type, params, error))
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, error);
            return -1;
        }
        tpStatus const status = tokenPoolValidate(&params);
        if (status != TP_SUCCESS)
        {
            reportError(ErrorCode::kINVALID_CONFIG,
                "the profile's largest input X " + dimsString(xMax) + " is not supported by the kernel: "
                    + tokenPoolStatusString(status));
            return -1;
        }
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneBuild::getOutputDataTypes (NvInferRuntime.h): Y has X's type.
int32_t TokenPoolPlugin::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbInputs) const noexcept
{
    try
    {
        if (nbInputs != 2 || nbOutputs != 1)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "expects 2 inputs (X, W) and 1 output");
            return -1;
        }
        tpDataType unused{};
        if (!toTpType(inputTypes[0], unused) || !toTpType(inputTypes[1], unused))
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, std::string("X and W must be float32 or float16, got ")
                    + typeName(inputTypes[0]) + " and " + typeName(inputTypes[1]));
            return -1;
        }
        outputTypes[0] = inputTypes[0];
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneBuild::getOutputShapes (NvInferRuntime.h): Y = [B, K, C] built with IExprBuilder; K is a constant.
int32_t TokenPoolPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const* /*shapeInputs*/,
    int32_t /*nbShapeInputs*/, DimsExprs* outputs, int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept
{
    try
    {
        if (nbInputs != 2 || nbOutputs != 1 || inputs[0].nbDims != 3 || inputs[1].nbDims != 2)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "expects inputs X [B, N, C] and W [B, N], and 1 output");
            return -1;
        }
        IDimensionExpr const* n = inputs[0].d[1];
        if (n->isConstant() && n->getConstantValue() < mAttributes.numClusters)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "num_clusters K=" + std::to_string(mAttributes.numClusters)
                    + " exceeds the number of tokens N=" + std::to_string(n->getConstantValue()) + "; K must be <= N");
            return -1;
        }
        outputs[0].nbDims = 3;
        outputs[0].d[0] = inputs[0].d[0];
        outputs[0].d[1] = exprBuilder.constant(mAttributes.numClusters);
        outputs[0].d[2] = inputs[0].d[2];
        return 0;
    }
    catch (...)
    {
        return -1;
    }
}

// IPluginV3OneBuild::supportsFormatCombination (NvInferRuntime.h): decide pos from inOut[0..pos] only.
// Linear layout everywhere; X float32|float16; W float32|float16 (independent of X); Y the type of X.
bool TokenPoolPlugin::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) noexcept
{
    if (nbInputs != 2 || nbOutputs != 1 || pos < 0 || pos >= 3)
    {
        return false;
    }
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    if (pos == 2)
    {
        return desc.type == inOut[0].desc.type;
    }
    return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
}

int32_t TokenPoolPlugin::getNbOutputs() const noexcept
{
    return 1;
}

// IPluginV3OneBuild::getWorkspaceSize (NvInferRuntime.h): enough for the profile's max dims "or any smaller problem".
// Relies on tokenPoolWorkspaceSize() growing with B, N and C.
size_t TokenPoolPlugin::getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
    DynamicPluginTensorDesc const* /*outputs*/, int32_t /*nbOutputs*/) const noexcept
{
    try
    {
        if (nbInputs != 2 || inputs[0].max.nbDims != 3)
        {
            return 0;
        }
        Dims const& xMax = inputs[0].max;
        tpParams params{};
        std::string error;
        if (!makeParams(mAttributes, xMax.d[0], xMax.d[1], xMax.d[2], inputs[0].desc.type, inputs[1].desc.type, params,
                error))
        {
            return 0;
        }
        return tokenPoolWorkspaceSize(&params);
    }
    catch (...)
    {
        return 0;
    }
}

// IPluginV3OneBuild::getTimingCacheID (NvInferRuntime.h): creation state only; TensorRT adds I/O shapes and formats.
char const* TokenPoolPlugin::getTimingCacheID() noexcept
{
    return mTimingCacheId.c_str();
}

// IPluginV3OneBuild::getMetadataString (NvInferRuntime.h): attribute values, shown in engine inspection.
char const* TokenPoolPlugin::getMetadataString() noexcept
{
    return mMetadata.c_str();
}

// IPluginV3OneRuntime::onShapeChange (NvInferRuntime.h): concrete dims before enqueue; reject K > N and shapes the
// launcher cannot run, with a message through the context's error recorder.
int32_t TokenPoolPlugin::onShapeChange(
    PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const* /*out*/, int32_t nbOutputs) noexcept
{
    try
    {
        if (nbInputs != 2 || nbOutputs != 1)
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, "expects 2 inputs (X, W) and 1 output");
            return -1;
        }
        std::string error = checkDims(in[0].dims, in[1].dims);
        tpParams params{};
        if (error.empty()
            && makeParams(mAttributes, in[0].dims.d[0], in[0].dims.d[1], in[0].dims.d[2], in[0].type, in[1].type,
                params, error))
        {
            tpStatus const status = tokenPoolValidate(&params);
            if (status != TP_SUCCESS)
            {
                error = "input X " + dimsString(in[0].dims) + " is not supported by the kernel: "
                    + tokenPoolStatusString(status);
            }
        }
        if (!error.empty())
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, error);
            return -1;
        }
        return 0;
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
        Dims const& x = inputDesc[0].dims;
        if (x.nbDims == 3 && (x.d[0] == 0 || x.d[2] == 0))
        {
            return 0; // empty output: nothing to write
        }
        tpParams params{};
        std::string error;
        if (!makeParams(mAttributes, x.d[0], x.d[1], x.d[2], inputDesc[0].type, inputDesc[1].type, params, error))
        {
            reportError(ErrorCode::kINVALID_ARGUMENT, error);
            return -1;
        }
        tpStatus const status = tokenPoolLaunch(&params, inputs[0], inputs[1], outputs[0], workspace, stream);
        if (status != TP_SUCCESS)
        {
            reportError(status == TP_ERROR_CUDA ? ErrorCode::kFAILED_EXECUTION : ErrorCode::kINVALID_ARGUMENT,
                std::string("kernel launch failed for X ") + dimsString(x) + ": " + tokenPoolStatusString(status));
            return -1;
        }
        return 0;
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
        mSerialFields.clear();
        mSerialFields.emplace_back("num_clusters", &mAttributes.numClusters, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("iterations", &mAttributes.iterations, PluginFieldType::kINT32, 1);
        mSerialFields.emplace_back("mode", mAttributes.mode.c_str(), PluginFieldType::kCHAR,
            static_cast<int32_t>(mAttributes.mode.size() + 1)); // with the NUL, as the ONNX parser passes strings
        mSerialFields.emplace_back("weighted", &mAttributes.weighted, PluginFieldType::kINT32, 1);
        mSerialFieldCollection.nbFields = static_cast<int32_t>(mSerialFields.size());
        mSerialFieldCollection.fields = mSerialFields.data();
        return &mSerialFieldCollection;
    }
    catch (...)
    {
        return nullptr;
    }
}

void TokenPoolPlugin::reportError(ErrorCode code, std::string const& message) const noexcept
{
    try
    {
        std::string const text = "TokenPool layer '" + mLayerName + "': " + message;
        if (mErrorRecorder != nullptr)
        {
            mErrorRecorder->reportError(code, text.c_str()); // IErrorRecorder (NvInferRuntimeBase.h)
        }
        else
        {
            logMessage(ILogger::Severity::kERROR, text);
        }
    }
    catch (...)
    {
    }
}

// =================================================================================================================
// TokenPoolPluginCreator
// =================================================================================================================
TokenPoolPluginCreator::TokenPoolPluginCreator()
{
    // The fields the ONNX parser copies from the node's attributes (it only passes the fields listed here).
    mFieldNames.emplace_back("num_clusters", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("iterations", nullptr, PluginFieldType::kINT32, 1);
    mFieldNames.emplace_back("mode", nullptr, PluginFieldType::kCHAR, 0);
    mFieldNames.emplace_back("weighted", nullptr, PluginFieldType::kINT32, 1);
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
        TokenPoolAttributes attributes;
        bool haveClusters = false;
        std::string error;
        for (int32_t i = 0; fc != nullptr && i < fc->nbFields && error.empty(); ++i)
        {
            PluginField const& field = fc->fields[i];
            if (field.name == nullptr)
            {
                continue;
            }
            std::string const fieldName = field.name;
            if (fieldName == "num_clusters")
            {
                haveClusters = readInt(field, attributes.numClusters, error);
            }
            else if (fieldName == "iterations")
            {
                readInt(field, attributes.iterations, error);
            }
            else if (fieldName == "weighted")
            {
                readInt(field, attributes.weighted, error);
            }
            else if (fieldName == "mode")
            {
                readString(field, attributes.mode, error);
            }
            else if (fieldName != "plugin_version" && fieldName != "plugin_namespace")
            {
                logMessage(ILogger::Severity::kWARNING,
                    "layer '" + layer + "': ignoring unknown plugin field '" + fieldName + "'");
            }
        }
        if (error.empty() && !haveClusters)
        {
            error = "plugin field 'num_clusters' is required";
        }
        else if (error.empty() && attributes.numClusters < 1)
        {
            error = "num_clusters must be >= 1, got " + std::to_string(attributes.numClusters);
        }
        else if (error.empty() && attributes.iterations < 0)
        {
            error = "iterations must be >= 0, got " + std::to_string(attributes.iterations);
        }
        else if (error.empty() && attributes.mode != "kmedoids" && attributes.mode != "kmeans")
        {
            error = "mode must be 'kmedoids' or 'kmeans', got '" + attributes.mode + "'";
        }
        else if (error.empty() && attributes.weighted != 0 && attributes.weighted != 1)
        {
            error = "weighted must be 0 or 1, got " + std::to_string(attributes.weighted);
        }
        if (!error.empty())
        {
            logMessage(ILogger::Severity::kERROR, "layer '" + layer + "': " + error);
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

} // namespace tpdeploy

// =================================================================================================================
// Plugin-library entry points (trtexec/samples README "Using your own Plugin"; developer guide "Plugin Shared
// Libraries"). getPluginCreators is NOT exported: it is the deprecated entry point typed for IPluginCreator (V2),
// and this library has only an IPluginCreatorV3One.
// =================================================================================================================
extern "C" TPDEPLOY_PLUGIN_EXPORT IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static IPluginCreatorInterface* const kCREATORS[] = {&tpdeploy::creatorInstance()};
    bool selfRegistered = false;
    {
        std::lock_guard<std::mutex> lock(tpdeploy::gRegisterMutex);
        selfRegistered = tpdeploy::gSelfRegistered;
    }
    // IPluginRegistry::loadLibrary fails if a creator is already registered. If initLibTpdeployPlugins() already
    // put this creator in the global registry (TPDEPLOY_TRT_AUTOREGISTER=1), hand out none rather than a duplicate.
    nbCreators = selfRegistered ? 0 : 1;
    return kCREATORS;
}

extern "C" TPDEPLOY_PLUGIN_EXPORT void setLoggerFinder(ILoggerFinder* finder)
{
    if (finder != nullptr)
    {
        tpdeploy::gLoggerFinder.store(finder);
    }
}

extern "C" TPDEPLOY_PLUGIN_EXPORT bool initLibTpdeployPlugins(void* logger)
{
    try
    {
        std::lock_guard<std::mutex> lock(tpdeploy::gRegisterMutex);
        if (logger != nullptr)
        {
            tpdeploy::gLogger.store(static_cast<ILogger*>(logger));
        }
        if (tpdeploy::gSelfRegistered)
        {
            return true;
        }
        tpdeploy::GetPluginRegistryFn const getRegistry = tpdeploy::findGetPluginRegistry();
        IPluginRegistry* registry = getRegistry != nullptr ? getRegistry() : nullptr;
        if (registry == nullptr)
        {
            tpdeploy::logMessage(ILogger::Severity::kERROR,
                std::string("cannot register: libnvinfer.so.") + std::to_string(NV_TENSORRT_MAJOR)
                    + " is neither loaded nor loadable (import/load TensorRT first, or load this library with "
                      "IPluginRegistry::loadLibrary)");
            return false;
        }
        using tpdeploy::kTOKEN_POOL_NAME;
        using tpdeploy::kTOKEN_POOL_NAMESPACE;
        using tpdeploy::kTOKEN_POOL_VERSION;
        if (registry->getCreator(kTOKEN_POOL_NAME, kTOKEN_POOL_VERSION, kTOKEN_POOL_NAMESPACE) != nullptr)
        {
            tpdeploy::logMessage(ILogger::Severity::kVERBOSE, "tpdeploy::TokenPool version 1 is already registered");
            return true;
        }
        tpdeploy::gSelfRegistered = registry->registerCreator(tpdeploy::creatorInstance(), kTOKEN_POOL_NAMESPACE);
        tpdeploy::logMessage(tpdeploy::gSelfRegistered ? ILogger::Severity::kVERBOSE : ILogger::Severity::kERROR,
            tpdeploy::gSelfRegistered ? "registered plugin creator tpdeploy::TokenPool version 1"
                                      : "could not register plugin creator tpdeploy::TokenPool version 1");
        return tpdeploy::gSelfRegistered;
    }
    catch (...)
    {
        return false;
    }
}
