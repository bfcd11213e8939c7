/*
 * tpdeploy: the plugin library's entry points and its logger (libtpdeploy_plugin.so), as NVIDIA's plugin library
 * keeps them in its api/ folder. The library links no libnvinfer: TensorRT calls getCreators/setLoggerFinder, and the
 * optional self-registration finds getPluginRegistry in the host process at run time.
 */
#ifndef TPDEPLOY_TOKEN_POOL_REGISTRATION_H
#define TPDEPLOY_TOKEN_POOL_REGISTRATION_H

#include <NvInferRuntime.h>

#include <string>

namespace tpdeploy
{

//! Logs through the ILoggerFinder that TensorRT gave setLoggerFinder(), else the ILogger given to
//! initLibTpdeployPlugins(), else (warnings and errors only) stderr.
void logMessage(nvinfer1::ILogger::Severity severity, std::string const& message) noexcept;

}  // namespace tpdeploy

// Exported with default visibility: the library is compiled with -fvisibility=hidden (TensorRT's own TENSORRTAPI
// macro is empty outside TensorRT's build).
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

#endif  // TPDEPLOY_TOKEN_POOL_REGISTRATION_H
