/*
 * tpdeploy: TensorRT plugin for the custom ONNX op tpdeploy::TokenPool (version 1): the IPluginV3 shim.
 *
 * An IPluginV3 plugin (TensorRT 10+) with the three "One" capabilities, and its IPluginCreatorV3One creator. Both
 * only translate between TensorRT's descriptors and the structs of tokenPoolCore.h, where every decision lives
 * (fields, types, shapes, formats, workspace, checks, the launch), and report the core's errors to TensorRT.
 *
 * Interfaces implemented (all declared in NvInferRuntime.h / NvInferPluginBase.h of TensorRT 10.x and 11.x):
 *   IPluginV3            NvInferPluginBase.h   (capability wrapper, clone)
 *   IPluginV3OneCore     NvInferRuntime.h      (name, version, namespace)
 *   IPluginV3OneBuild    NvInferRuntime.h      (types, shapes, formats, workspace, timing-cache id)
 *   IPluginV3OneRuntime  NvInferRuntime.h      (onShapeChange, enqueue, attachToContext, serialization fields)
 *   IPluginCreatorV3One  NvInferRuntime.h      (field list, createPlugin)
 * Documentation: https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/extending-custom-layers.html
 */
#ifndef TPDEPLOY_TOKEN_POOL_PLUGIN_H
#define TPDEPLOY_TOKEN_POOL_PLUGIN_H

#include "tokenPoolCore.h"

#include <NvInferRuntime.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tpdeploy
{

class TokenPoolPlugin final : public nvinfer1::IPluginV3,
                              public nvinfer1::IPluginV3OneCore,
                              public nvinfer1::IPluginV3OneBuild,
                              public nvinfer1::IPluginV3OneRuntime
{
public:
    TokenPoolPlugin(std::string layerName, Attributes attributes);
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
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs, nvinfer1::DataType const* inputTypes,
        int32_t nbInputs) const noexcept override;
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
    //! 0 for a success; otherwise reports the message (context's error recorder, else the logger) and gives -1.
    int32_t report(Result const& result) const noexcept;

    std::string mLayerName;
    TokenPoolCore mCore;
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

}  // namespace tpdeploy

#endif  // TPDEPLOY_TOKEN_POOL_PLUGIN_H
