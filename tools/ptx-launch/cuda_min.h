/* The few CUDA driver API types, constants and entry points tools/ptx-launch/ptx_launch.c uses, declared by us (no
 * CUDA toolkit needed to compile it). The functions are reached through dlopen("libcuda.so.1") + dlsym at run time,
 * so building the sample links no CUDA library and only running it needs an NVIDIA driver. Names and values follow
 * the driver API's public ABI; the *_v2 symbols are the 64-bit-size variants every current driver exports. */
#ifndef ILGPUMOE_CUDA_MIN_H
#define ILGPUMOE_CUDA_MIN_H

#include <stddef.h>

typedef int CUresult;
typedef int CUdevice;
typedef unsigned long long CUdeviceptr;
typedef struct CUctx_st *CUcontext;
typedef struct CUmod_st *CUmodule;
typedef struct CUfunc_st *CUfunction;
typedef struct CUstream_st *CUstream;

#define CUDA_SUCCESS 0

/* Device attributes (CUdevice_attribute). */
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR 75
#define CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR 76

/* cuLaunchKernel's `extra` keys: the whole parameter buffer at once, as ILGPU itself launches. */
#define CU_LAUNCH_PARAM_END ((void *)0x00)
#define CU_LAUNCH_PARAM_BUFFER_POINTER ((void *)0x01)
#define CU_LAUNCH_PARAM_BUFFER_SIZE ((void *)0x02)

/* Signatures of the entry points, as function-pointer types for dlsym. */
typedef CUresult (*cuInit_t)(unsigned int flags);
typedef CUresult (*cuDeviceGetCount_t)(int *count);
typedef CUresult (*cuDeviceGet_t)(CUdevice *device, int ordinal);
typedef CUresult (*cuDeviceGetAttribute_t)(int *value, int attribute, CUdevice device);
typedef CUresult (*cuCtxCreate_t)(CUcontext *context, unsigned int flags, CUdevice device);      /* cuCtxCreate_v2 */
typedef CUresult (*cuCtxDestroy_t)(CUcontext context);                                          /* cuCtxDestroy_v2 */
typedef CUresult (*cuCtxSynchronize_t)(void);
typedef CUresult (*cuModuleLoadData_t)(CUmodule *module, const void *image);
typedef CUresult (*cuModuleUnload_t)(CUmodule module);
typedef CUresult (*cuModuleGetFunction_t)(CUfunction *function, CUmodule module, const char *name);
typedef CUresult (*cuMemAlloc_t)(CUdeviceptr *ptr, size_t bytes);                                /* cuMemAlloc_v2 */
typedef CUresult (*cuMemFree_t)(CUdeviceptr ptr);                                                /* cuMemFree_v2 */
typedef CUresult (*cuMemcpyHtoD_t)(CUdeviceptr dst, const void *src, size_t bytes);              /* cuMemcpyHtoD_v2 */
typedef CUresult (*cuMemcpyDtoH_t)(void *dst, CUdeviceptr src, size_t bytes);                    /* cuMemcpyDtoH_v2 */
typedef CUresult (*cuLaunchKernel_t)(CUfunction function, unsigned int gridX, unsigned int gridY, unsigned int gridZ,
                                     unsigned int blockX, unsigned int blockY, unsigned int blockZ,
                                     unsigned int sharedMemBytes, CUstream stream, void **kernelParams, void **extra);
typedef CUresult (*cuGetErrorName_t)(CUresult error, const char **name);

#endif
