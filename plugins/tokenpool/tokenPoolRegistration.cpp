/*
 * tpdeploy: the plugin library's entry points (getCreators, setLoggerFinder, initLibTpdeployPlugins and the optional
 * self-registration on load) and its logger; see tokenPoolRegistration.h and README.md ("Loading it").
 */
#include "tokenPoolRegistration.h"

#include "tokenPoolPlugin.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#if !defined(_WIN32)
#include <dlfcn.h>
#endif

using namespace nvinfer1;

namespace tpdeploy
{
namespace
{

// TensorRT gives a plugin library an ILoggerFinder through setLoggerFinder() (NvInferRuntime.h, class
// ILoggerFinder); initLibTpdeployPlugins() may give an ILogger.
std::atomic<ILoggerFinder*> gLoggerFinder{nullptr};
std::atomic<ILogger*> gLogger{nullptr};

TokenPoolPluginCreator& creatorInstance()
{
    static TokenPoolPluginCreator creator;
    return creator;
}

// Optional self-registration (initLibTpdeployPlugins). getPluginRegistry() (NvInferRuntime.h) is looked up at run
// time in the libnvinfer the host process uses, so this library need not link against libnvinfer.
std::mutex gRegisterMutex;
bool gSelfRegistered{false};

using GetPluginRegistryFn = IPluginRegistry* (*)();

GetPluginRegistryFn findGetPluginRegistry()
{
#if defined(_WIN32)
    return nullptr;  // on Windows, load the library with IPluginRegistry::loadLibrary instead
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
                dlclose(handle);  // drops only the reference RTLD_NOLOAD added
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

}  // namespace

void logMessage(ILogger::Severity severity, std::string const& message) noexcept
{
    try
    {
        ILogger* logger = nullptr;
        if (ILoggerFinder* finder = gLoggerFinder.load())
        {
            logger = finder->findLogger();  // must be called on the thread of the plugin call (it is)
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

}  // namespace tpdeploy

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
