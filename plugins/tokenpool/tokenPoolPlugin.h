/*
 * tpdeploy: TensorRT plugin for the custom ONNX op tpdeploy::TokenPool (version 1).
 *
 * An IPluginV3 plugin (TensorRT 10+) with the three "One" capabilities, and its IPluginCreatorV3One creator.
 * The plugin is a thin adapter: it checks shapes and types, then hands everything to the plain C launcher in
 * tokenPoolKernel.h, where all algorithmic decisions live.
 *
 * Interfaces implemented (all declared in NvInferRuntime.h / NvInferPluginBase.h of TensorRT 10.x and 11.x):
 *   IPluginV3            NvInferPluginBase.h   (capability wrapper, clone)
 *   IPluginV3OneCore     NvInferRuntime.h      (name, version, namespace)
 *   IPluginV3OneBuild    NvInferRuntime.h      (types, shapes, formats, workspace, timing-cache id)
 *   IPluginV3OneRuntime  NvInferRuntime.h      (onShapeChange, enqueue, attachToContext, serialization fields)
 *   IPluginCreatorV3One  NvInferRuntime.h      (field list, createPlugin)
 * Documentation: https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/extending-custom-layers.html
 *
 * Inputs: X [B, N, C] float32|float16, W [B, N] float32|float16 (independently); output Y [B, K, C], X's type.
 * Plugin fields: num_clusters (kINT32), iterations (kINT32), mode (kCHAR "kmedoids"|"kmeans"), weighted (kINT32).
 */
#ifndef TPDEPLOY_TOKEN_POOL_PLUGIN_H
#define TPDEPLOY_TOKEN_POOL_PLUGIN_H

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tpdeploy
{

constexpr char const* kTOKEN_POOL_NAME{"TokenPool"};
constexpr char const* kTOKEN_POOL_VERSION{"1"};
constexpr char const* kTOKEN_POOL_NAMESPACE{"tpdeploy"};

//! The op's attributes (SPEC section 1), validated by the creator.
struct TokenPoolAttributes
{
    int32_t numClusters{0};        //!< K >= 1
    int32_t iterations{3};         //!< T >= 0 (default as tpdeploy.op.token_pool)
    std::string mode{"kmedoids"};  //!< "kmedoids" | "kmeans"
    int32_t weighted{1};           //!< 0 | 1
};

class TokenPoolPlugin final : public nvinfer1::IPluginV3,
                              public nvinfer1::IPluginV3OneCore,
                              public nvinfer1::IPluginV3OneBuild,
                              public nvinfer1::IPluginV3OneRuntime
{
public:
    TokenPoolPlugin(std::string layerName, TokenPoolAttributes attributes);
    TokenPoolPlugin(TokenPoolPlugin const&) = delete;
    TokenPoolPlugin& operator=(TokenPoolPlugin const&) = delete;
    ~TokenPoolPlugin() override = default;

    // IPluginV3 (NvInferPluginBase.h)
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;
    nvinfer1::IPluginV3* clone() noexcept override;

    // IPluginV3OneCore (NvInferRuntime.h)
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

    // IPluginV3OneBuild (NvInferRuntime.h)
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    int32_t getNbOutputs() const noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const* inputs, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* outputs, int32_t nbOutputs) const noexcept override;
    char const* getTimingCacheID() noexcept override;
    char const* getMetadataString() noexcept override;

    // IPluginV3OneRuntime (NvInferRuntime.h)
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const* out,
        int32_t nbOutputs) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext* context) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

private:
    //! Reports a failure through the execution context's error recorder when there is one, else the logger.
    void reportError(nvinfer1::ErrorCode code, std::string const& message) const noexcept;
    //! Checks X [B,N,C], W [B,N] (-1 = not known yet) against K; returns an empty string when valid.
    std::string checkDims(nvinfer1::Dims const& x, nvinfer1::Dims const& w) const;

    std::string mLayerName;
    TokenPoolAttributes mAttributes;
    std::string mTimingCacheId;                     //!< attribute-derived; TensorRT adds I/O shapes and formats
    std::string mMetadata;                          //!< human-readable attributes
    std::vector<nvinfer1::PluginField> mSerialFields;
    nvinfer1::PluginFieldCollection mSerialFieldCollection{};
    nvinfer1::IErrorRecorder* mErrorRecorder{nullptr};  //!< from attachToContext(); owned by the context
};

class TokenPoolPluginCreator final : public nvinfer1::IPluginCreatorV3One
{
public:
    TokenPoolPluginCreator();
    ~TokenPoolPluginCreator() override = default;

    // IPluginCreatorV3One (NvInferRuntime.h)
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override;
    char const* getPluginName() const noexcept override;
    char const* getPluginVersion() const noexcept override;
    char const* getPluginNamespace() const noexcept override;

private:
    std::vector<nvinfer1::PluginField> mFieldNames;
    nvinfer1::PluginFieldCollection mFieldCollection{};
};

} // namespace tpdeploy

//
// Plugin-library entry points, exported with default visibility even when the library is compiled with
// -fvisibility=hidden (TensorRT's own TENSORRTAPI macro is empty outside TensorRT's build).
//
#if defined(_WIN32)
#define TPDEPLOY_PLUGIN_EXPORT __declspec(dllexport)
#else
#define TPDEPLOY_PLUGIN_EXPORT __attribute__((visibility("default")))
#endif

extern "C"
{
    //! TensorRT 10+ entry point of a plugin shared library, called by IPluginRegistry::loadLibrary
    //! (trtexec --dynamicPlugins, tensorrt.IPluginRegistry.load_library, engines built with
    //! --setPluginsToSerialize). Returns the library's IPluginV3 creators (IPluginCreatorV3One).
    TPDEPLOY_PLUGIN_EXPORT nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

    //! Entry point through which TensorRT hands the library a logger finder (called by loadLibrary).
    TPDEPLOY_PLUGIN_EXPORT void setLoggerFinder(nvinfer1::ILoggerFinder* finder);

    //! Explicit registration for hosts that only dlopen() the library (ctypes.CDLL, Polygraphy --plugins,
    //! onnxruntime trt_extra_plugin_lib_paths, Triton plugins=...): registers the creator with the global
    //! registry under namespace "tpdeploy" (getPluginRegistry() of the libnvinfer the process has loaded, else of
    //! libnvinfer.so.<major> loaded by soname).
    //! Like initLibNvInferPlugins: idempotent; logger is an optional nvinfer1::ILogger*. Returns true when the
    //! creator is registered. Setting TPDEPLOY_TRT_AUTOREGISTER=1 makes the library call it when it is loaded.
    //! Once self-registered, getCreators() returns no creators, so a later loadLibrary() does not collide.
    TPDEPLOY_PLUGIN_EXPORT bool initLibTpdeployPlugins(void* logger);
}

#endif // TPDEPLOY_TOKEN_POOL_PLUGIN_H
