/* ptx_launch: loads one kernel of an `ilgpumoe ptx --out DIR` export with the CUDA driver API, fills its parameter
 * buffer from the export's ABI (DIR/abi.tsv, the line-based twin of manifest.json's "abi"), launches it and checks the
 * result against a CPU loop. It shows what an engine outside .NET does; it reads no C#.
 *
 *   ptx_launch [--no-gpu] DIR [N]
 *
 * The kernel is dense-add-v1 (y = a + b over N floats, default N = 100003: not a multiple of the group, so the tail
 * guard runs). --no-gpu stops after the parameter buffer is filled and printed (what CI runs: no driver needed).
 * Exit 0 ok, 1 wrong result or a CUDA call failed, 2 bad input (files, or an ABI this sample does not know),
 * 4 no CUDA driver or device (not 3: the GPU runner reads 3 as a timed-out case).
 *
 * abi.tsv, tab-separated (why not JSON: C has no JSON reader, and a line format needs none):
 *   kernel NAME ENTRY FILE PARAM_BYTES MIN_SM GROUP DYNAMIC_SHARED_BYTES
 *   slot   NAME SLOT  OFFSET BYTES TYPE        (OFFSET in the whole buffer; an ArrayView is SLOT.ptr + SLOT.length)
 * Build: cc -std=c11 -O2 -Wall -Wextra -Werror -o ptx_launch tools/ptx-launch/ptx_launch.c -ldl
 * (libcuda is opened with dlopen at run time, so the build needs no CUDA library). */
#define _POSIX_C_SOURCE 200809L
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_min.h"

#define KERNEL "dense-add-v1"
#define MAX_SLOTS 64
#define MAX_BUFFER 4096 /* bytes: the PTX parameter limit of ISA 7.8 is 4352 */

struct slot {
    char name[64];
    int offset, bytes;
    char type[16];
    int filled;
};

struct abi {
    char entry[128], file[256];
    int param_bytes, min_sm, group;
    long dynamic_shared;
    struct slot slots[MAX_SLOTS];
    int count;
};

static int fail(int code, const char *what) {
    fprintf(stderr, "ptx_launch: %s\n", what);
    return code;
}

/* Splits a line on tabs in place; returns the field count. */
static int split(char *line, char **fields, int max) {
    int n = 0;
    line[strcspn(line, "\r\n")] = 0;
    for (char *p = line; n < max;) {
        fields[n++] = p;
        char *tab = strchr(p, '\t');
        if (!tab) break;
        *tab = 0;
        p = tab + 1;
    }
    return n;
}

static int parse_int(const char *s, long *out) {
    char *end;
    *out = strtol(s, &end, 10);
    return *s != 0 && *end == 0;
}

/* Reads KERNEL's lines of DIR/abi.tsv. 0 ok, else an exit code (message printed). */
static int read_abi(const char *dir, struct abi *abi) {
    char path[1024], line[1024];
    snprintf(path, sizeof path, "%s/abi.tsv", dir);
    FILE *f = fopen(path, "r");
    if (!f) { fprintf(stderr, "ptx_launch: cannot open %s (run `ilgpumoe ptx --out %s` first)\n", path, dir); return 2; }
    int found = 0;
    memset(abi, 0, sizeof *abi);
    while (fgets(line, sizeof line, f)) {
        char *c[8];
        int n = split(line, c, 8);
        if (n < 2 || strcmp(c[1], KERNEL) != 0) continue;
        long v[4];
        if (strcmp(c[0], "kernel") == 0 && n == 8 && parse_int(c[4], &v[0]) && parse_int(c[5], &v[1]) && parse_int(c[6], &v[2]) && parse_int(c[7], &v[3])) {
            snprintf(abi->entry, sizeof abi->entry, "%s", c[2]);
            snprintf(abi->file, sizeof abi->file, "%s", c[3]);
            abi->param_bytes = (int)v[0]; abi->min_sm = (int)v[1]; abi->group = (int)v[2]; abi->dynamic_shared = v[3];
            found = 1;
        } else if (strcmp(c[0], "slot") == 0 && n == 6 && parse_int(c[3], &v[0]) && parse_int(c[4], &v[1]) && abi->count < MAX_SLOTS) {
            struct slot *s = &abi->slots[abi->count++];
            snprintf(s->name, sizeof s->name, "%s", c[2]);
            snprintf(s->type, sizeof s->type, "%s", c[5]);
            s->offset = (int)v[0]; s->bytes = (int)v[1];
        } else {
            fclose(f);
            fprintf(stderr, "ptx_launch: %s: a line for %s is not `kernel` (8 fields, numbers) or `slot` (6 fields)\n", path, KERNEL);
            return 2;
        }
    }
    fclose(f);
    if (!found) { fprintf(stderr, "ptx_launch: %s has no `kernel %s` line (group must be a number)\n", path, KERNEL); return 2; }
    if (abi->param_bytes <= 0 || abi->param_bytes > MAX_BUFFER) return fail(2, "parameter buffer size out of range");
    for (int i = 0; i < abi->count; i++)
        if (abi->slots[i].offset < 0 || abi->slots[i].offset + abi->slots[i].bytes > abi->param_bytes)
            return fail(2, "a slot lies outside the parameter buffer");
    return 0;
}

/* Writes a value into the slot named NAME, checking its size; 0 ok. */
static int put(struct abi *abi, unsigned char *buffer, const char *name, const void *value, int bytes) {
    for (int i = 0; i < abi->count; i++) {
        struct slot *s = &abi->slots[i];
        if (strcmp(s->name, name) != 0) continue;
        if (s->bytes != bytes) { fprintf(stderr, "ptx_launch: slot %s is %d bytes, this sample writes %d\n", name, s->bytes, bytes); return 2; }
        memcpy(buffer + s->offset, value, (size_t)bytes);
        s->filled = 1;
        return 0;
    }
    fprintf(stderr, "ptx_launch: %s has no slot %s: its ABI is not the one this sample knows\n", KERNEL, name);
    return 2;
}

/* The three views y = a + b: device pointer and length (elements) of each. */
static int fill(struct abi *abi, unsigned char *buffer, const CUdeviceptr ptr[3], int64_t n) {
    static const char *views[3] = {"a", "b", "y"};
    char name[64];
    int rc = 0;
    for (int v = 0; v < 3 && rc == 0; v++) {
        snprintf(name, sizeof name, "%s.ptr", views[v]);
        rc = put(abi, buffer, name, &ptr[v], 8);
        snprintf(name, sizeof name, "%s.length", views[v]);
        if (rc == 0) rc = put(abi, buffer, name, &n, 8);
    }
    for (int i = 0; i < abi->count && rc == 0; i++)
        if (!abi->slots[i].filled) { fprintf(stderr, "ptx_launch: slot %s was not filled: its ABI is not the one this sample knows\n", abi->slots[i].name); rc = 2; }
    return rc;
}

static char *read_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = size >= 0 ? malloc((size_t)size + 1) : NULL;
    if (text && fread(text, 1, (size_t)size, f) != (size_t)size) { free(text); text = NULL; }
    if (text) text[size] = 0;
    fclose(f);
    return text;
}

static cuGetErrorName_t error_name;

static int check(CUresult r, const char *call) {
    if (r == CUDA_SUCCESS) return 0;
    const char *name = "?";
    if (error_name) error_name(r, &name);
    fprintf(stderr, "ptx_launch: %s failed: %s (%d)\n", call, name, r);
    return 1;
}

#define LOAD(var, type, symbol)                                                                  \
    type var = (type)dlsym(lib, symbol);                                                         \
    if (!var) { fprintf(stderr, "ptx_launch: libcuda has no %s\n", symbol); return 4; }
#define CHECK(call)                  \
    do {                             \
        if (check((call), #call)) {  \
            rc = 1;                  \
            goto done;               \
        }                            \
    } while (0)

int main(int argc, char **argv) {
    int no_gpu = argc > 1 && strcmp(argv[1], "--no-gpu") == 0;
    int first = no_gpu ? 2 : 1;
    if (argc < first + 1 || argc > first + 2) return fail(2, "usage: ptx_launch [--no-gpu] DIR [N]");
    const char *dir = argv[first];
    long n_arg = 100003;
    if (argc == first + 2 && (!parse_int(argv[first + 1], &n_arg) || n_arg < 1 || n_arg > (1L << 28)))
        return fail(2, "N must be a whole number from 1 to 268435456");
    const int64_t n = n_arg;

    struct abi abi;
    int rc = read_abi(dir, &abi);
    if (rc) return rc;
    if (abi.dynamic_shared != 0) return fail(2, "this sample launches kernels without dynamic shared memory");
    unsigned char buffer[MAX_BUFFER] = {0};
    unsigned int grid = (unsigned int)((n + abi.group - 1) / abi.group); /* manifest: grid ceil(N/256), group 256 */

    if (no_gpu) {
        /* Placeholder addresses: the layout is what is checked here, not the launch. */
        const CUdeviceptr fake[3] = {0x100000, 0x200000, 0x300000};
        if ((rc = fill(&abi, buffer, fake, n))) return rc;
        printf("%s: entry %s in %s, %d-byte parameter buffer, %d slots filled, grid %u x group %d, min sm_%d\n",
               KERNEL, abi.entry, abi.file, abi.param_bytes, abi.count, grid, abi.group, abi.min_sm);
        for (int i = 0; i < abi.count; i++)
            printf("  %-10s +%-3d %d B %s\n", abi.slots[i].name, abi.slots[i].offset, abi.slots[i].bytes, abi.slots[i].type);
        return 0;
    }

    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, abi.file);
    char *ptx = read_file(path);
    if (!ptx) { fprintf(stderr, "ptx_launch: cannot read %s\n", path); return 2; }

    void *lib = dlopen("libcuda.so.1", RTLD_NOW);
    if (!lib) lib = dlopen("libcuda.so", RTLD_NOW);
    if (!lib) { fprintf(stderr, "ptx_launch: no CUDA driver (libcuda.so.1): %s\n", dlerror()); free(ptx); return 4; }
    error_name = (cuGetErrorName_t)dlsym(lib, "cuGetErrorName");
    LOAD(cuInit, cuInit_t, "cuInit")
    LOAD(cuDeviceGetCount, cuDeviceGetCount_t, "cuDeviceGetCount")
    LOAD(cuDeviceGet, cuDeviceGet_t, "cuDeviceGet")
    LOAD(cuDeviceGetAttribute, cuDeviceGetAttribute_t, "cuDeviceGetAttribute")
    LOAD(cuCtxCreate, cuCtxCreate_t, "cuCtxCreate_v2")
    LOAD(cuCtxDestroy, cuCtxDestroy_t, "cuCtxDestroy_v2")
    LOAD(cuCtxSynchronize, cuCtxSynchronize_t, "cuCtxSynchronize")
    LOAD(cuModuleLoadData, cuModuleLoadData_t, "cuModuleLoadData")
    LOAD(cuModuleUnload, cuModuleUnload_t, "cuModuleUnload")
    LOAD(cuModuleGetFunction, cuModuleGetFunction_t, "cuModuleGetFunction")
    LOAD(cuMemAlloc, cuMemAlloc_t, "cuMemAlloc_v2")
    LOAD(cuMemFree, cuMemFree_t, "cuMemFree_v2")
    LOAD(cuMemcpyHtoD, cuMemcpyHtoD_t, "cuMemcpyHtoD_v2")
    LOAD(cuMemcpyDtoH, cuMemcpyDtoH_t, "cuMemcpyDtoH_v2")
    LOAD(cuLaunchKernel, cuLaunchKernel_t, "cuLaunchKernel")

    int devices = 0;
    if (cuInit(0) != CUDA_SUCCESS || cuDeviceGetCount(&devices) != CUDA_SUCCESS || devices == 0) {
        free(ptx);
        return fail(4, "the CUDA driver reports no device");
    }
    CUdevice device;
    CUcontext context = NULL;
    CUmodule module = NULL;
    CUdeviceptr dev[3] = {0, 0, 0};
    size_t bytes = (size_t)n * sizeof(float);
    float *a = malloc(bytes), *b = malloc(bytes), *y = malloc(bytes);
    if (!a || !b || !y) { rc = fail(1, "out of host memory"); goto done; }
    CHECK(cuDeviceGet(&device, 0));
    int major = 0, minor = 0;
    CHECK(cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, device));
    CHECK(cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, device));
    if (major * 10 + minor < abi.min_sm) {
        fprintf(stderr, "ptx_launch: device is sm_%d%d, the PTX needs sm_%d\n", major, minor, abi.min_sm);
        rc = 4;
        goto done;
    }
    CHECK(cuCtxCreate(&context, 0, device));
    CHECK(cuModuleLoadData(&module, ptx));
    CUfunction function;
    CHECK(cuModuleGetFunction(&function, module, abi.entry));

    for (int64_t i = 0; i < n; i++) {
        a[i] = (float)(i % 1000) * 0.25f - 7.0f;
        b[i] = (float)((i * 7) % 333) * 0.5f + 1.0f;
        y[i] = -1.0f;
    }
    for (int v = 0; v < 3; v++) CHECK(cuMemAlloc(&dev[v], bytes));
    CHECK(cuMemcpyHtoD(dev[0], a, bytes));
    CHECK(cuMemcpyHtoD(dev[1], b, bytes));
    CHECK(cuMemcpyHtoD(dev[2], y, bytes));
    if ((rc = fill(&abi, buffer, dev, n))) goto done;

    size_t size = (size_t)abi.param_bytes;
    void *extra[] = {CU_LAUNCH_PARAM_BUFFER_POINTER, buffer, CU_LAUNCH_PARAM_BUFFER_SIZE, &size, CU_LAUNCH_PARAM_END};
    CHECK(cuLaunchKernel(function, grid, 1, 1, (unsigned int)abi.group, 1, 1, (unsigned int)abi.dynamic_shared, NULL, NULL, extra));
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH(y, dev[2], bytes));

    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++)
        if (y[i] != a[i] + b[i]) {
            if (wrong++ < 5) fprintf(stderr, "ptx_launch: y[%lld] = %g, expected %g\n", (long long)i, y[i], a[i] + b[i]);
        }
    if (wrong) {
        fprintf(stderr, "ptx_launch: %s WRONG: %lld of %lld elements differ from the CPU loop\n", KERNEL, (long long)wrong, (long long)n);
        rc = 1;
    } else {
        printf("ptx_launch: %s ok: %s from %s on sm_%d%d, %lld elements, grid %u x group %d, %d-byte parameter buffer\n",
               KERNEL, abi.entry, abi.file, major, minor, (long long)n, grid, abi.group, abi.param_bytes);
    }

done:
    for (int v = 0; v < 3; v++)
        if (dev[v]) cuMemFree(dev[v]);
    if (module) cuModuleUnload(module);
    if (context) cuCtxDestroy(context);
    free(a); free(b); free(y); free(ptx);
    return rc;
}
