/*
 * tpdeploy: the TensorRT-free core of the TokenPool plugin (custom ONNX op tpdeploy::TokenPool, version 1).
 *
 * Every decision the TensorRT plugin makes lives here, in plain C++ that includes no TensorRT header, so that it
 * compiles with g++ alone and is tested on the CPU with the kernels' emulator (tests/test_plugin_core.py):
 * plugin fields (parsing, validation, serialisation), output types and shapes, the format and type rules, the
 * workspace size, the shape checks at build and run time, and the call to the C launcher (tokenPoolKernel.h).
 * tokenPoolPlugin.{h,cpp} is the IPluginV3 shim that translates TensorRT's descriptors into the structs below and
 * back; tokenPoolRegistration.{h,cpp} holds the library's entry points.
 *
 * Inputs: X [B, N, C] float32|float16, W [B, N] float32 (significance stays float32, as the exported models
 * compute it); output Y [B, K, C] in X's type. Fields: num_clusters, iterations, mode, weighted.
 */
#ifndef TPDEPLOY_TOKEN_POOL_CORE_H
#define TPDEPLOY_TOKEN_POOL_CORE_H

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tpdeploy
{

constexpr char const* kTOKEN_POOL_NAME{"TokenPool"};
constexpr char const* kTOKEN_POOL_VERSION{"1"};
constexpr char const* kTOKEN_POOL_NAMESPACE{"tpdeploy"};

//! Element types the rules tell apart; the shim maps every other TensorRT type to kOTHER.
enum class DataType : int32_t
{
    kFLOAT,
    kHALF,
    kBF16,
    kINT8,
    kINT32,
    kINT64,
    kOTHER
};

enum class Format : int32_t
{
    kLINEAR,
    kOTHER
};

//! Plugin field types the parser reads; the shim maps every other TensorRT field type to kOTHER.
enum class FieldType : int32_t
{
    kINT32,
    kINT64,
    kCHAR,
    kOTHER
};

//! Outcome of a check; the shim reports failures under TensorRT's ErrorCode of the same name.
enum class Status : int32_t
{
    kSUCCESS,
    kINVALID_ARGUMENT,
    kINVALID_CONFIG,
    kFAILED_EXECUTION
};

struct Result
{
    Status status{Status::kSUCCESS};
    std::string message;  //!< why it failed; empty on success

    bool ok() const noexcept
    {
        return status == Status::kSUCCESS;
    }
};

constexpr int32_t kMAX_DIMS{8};  //!< as TensorRT's Dims64::MAX_DIMS

//! Tensor extents; -1 for one not known yet (at build time).
struct Dims
{
    int32_t nbDims{0};
    int64_t d[kMAX_DIMS]{};
};

struct TensorDesc
{
    Dims dims;
    DataType type{DataType::kOTHER};
    Format format{Format::kOTHER};
};

//! A tensor over an optimization profile: desc.dims has -1 for the dynamic extents, min and max bound them.
struct DynamicTensorDesc
{
    TensorDesc desc;
    Dims min;
    Dims max;
};

//! One extent of an output: X's extent `fromX` when it is >= 0, else the constant `value`.
struct OutputExtent
{
    int32_t fromX{-1};
    int64_t value{0};
};

struct OutputShape
{
    int32_t nbDims{0};
    OutputExtent d[kMAX_DIMS];
};

//! A plugin field as TensorRT passes it (PluginField): `length` counts elements, for kCHAR the characters and
//! usually the terminating NUL.
struct Field
{
    char const* name;
    void const* data;
    FieldType type;
    int32_t length;
};

//! The op's attributes (SPEC section 1), valid once parseFields() accepted them.
struct Attributes
{
    int32_t numClusters{0};        //!< K >= 1, required
    int32_t iterations{3};         //!< T >= 0 (default as tpdeploy.tokenpool.reference.token_pool)
    std::string mode{"kmedoids"};  //!< "kmedoids" | "kmeans"
    int32_t weighted{1};           //!< 0 | 1
};

//! The plugin's fields: without values, the creator's list (names and types: the ONNX parser passes only the
//! node attributes listed there); with values, the fields to serialise, pointing into *values.
std::vector<Field> fieldList(Attributes const* values);

//! Reads fields (ONNX attributes at build time, fieldList(&attributes) from an engine) over the defaults and
//! validates them. Integers come as kINT32 or kINT64, mode as kCHAR; plugin_version and plugin_namespace are
//! ignored, any other unknown field adds a warning.
Result parseFields(Field const* fields, int32_t nbFields, Attributes& attributes, std::vector<std::string>& warnings);

//! The plugin's behaviour for one set of attributes. The methods follow IPluginV3OneBuild / IPluginV3OneRuntime,
//! on 2 inputs (X, W) and 1 output (Y).
class TokenPoolCore
{
public:
    //! attributes as accepted by parseFields().
    explicit TokenPoolCore(Attributes attributes);

    Attributes const& attributes() const noexcept
    {
        return mAttributes;
    }
    //! The fields to serialise; they point into this object.
    std::vector<Field> serialFields() const;
    //! Creation state for the timing cache (TensorRT adds the I/O shapes and formats).
    std::string const& timingCacheId() const noexcept
    {
        return mTimingCacheId;
    }
    //! The attributes, readable, for engine inspection.
    std::string const& metadata() const noexcept
    {
        return mMetadata;
    }

    //! Y has X's type; X must be float32 or float16, W float32.
    Result outputTypes(DataType const* inputs, int32_t nbInputs, DataType* outputs, int32_t nbOutputs) const;
    //! Y = [B, K, C] for X [B, N, C] and W [B, N] (-1 for an unknown extent); refuses K > N where N is known.
    Result outputShapes(Dims const* inputs, int32_t nbInputs, OutputShape* outputs, int32_t nbOutputs) const;
    //! Whether inOut[pos].desc may have its type and format, given inOut[0 .. pos - 1]: linear everywhere, the
    //! types of outputTypes().
    bool supportsFormatCombination(
        int32_t pos, DynamicTensorDesc const* inOut, int32_t nbInputs, int32_t nbOutputs) const noexcept;
    //! Over a profile: the shapes at its min and max, and that the launcher takes the largest problem.
    Result configure(DynamicTensorDesc const* inputs, int32_t nbInputs, int32_t nbOutputs) const;
    //! Bytes for the profile's largest problem, enough for every smaller one (tokenPoolWorkspaceSize grows with
    //! B, N and C); 0 if that problem is invalid.
    size_t workspaceSize(DynamicTensorDesc const* inputs, int32_t nbInputs) const;
    //! The concrete shapes before an enqueue: as configure(), for one problem.
    Result shapeChange(TensorDesc const* inputs, int32_t nbInputs, int32_t nbOutputs) const;
    //! One tokenPoolLaunch on `stream` for inputs (X, W) and output Y; an empty Y launches nothing.
    Result enqueue(TensorDesc const* inputs, void const* const* inputData, void* const* outputData, void* workspace,
        cudaStream_t stream) const;

private:
    //! X [B, N, C], W [B, N] (-1: unknown): ranks, matching B and N, K <= N.
    Result checkDims(Dims const& x, Dims const& w) const;

    Attributes mAttributes;
    std::string mTimingCacheId;
    std::string mMetadata;
};

}  // namespace tpdeploy

#endif  // TPDEPLOY_TOKEN_POOL_CORE_H
