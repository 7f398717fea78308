// Helpers every kernel file includes: float/double overloads of the math
// functions, a grid-stride index, and block-wide sum and max reductions.
#ifndef MPIPIPE_COMMON_CUH
#define MPIPIPE_COMMON_CUH

__device__ __forceinline__ float device_exp(float x) { return expf(x); }
__device__ __forceinline__ double device_exp(double x) { return exp(x); }
__device__ __forceinline__ float device_log(float x) { return logf(x); }
__device__ __forceinline__ double device_log(double x) { return log(x); }
__device__ __forceinline__ float device_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double device_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float device_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double device_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float device_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double device_max(double a, double b) { return fmax(a, b); }

template <typename T> __device__ __forceinline__ T not_a_number();
template <> __device__ __forceinline__ float not_a_number<float>() {
    return __int_as_float(0x7fc00000);
}
template <> __device__ __forceinline__ double not_a_number<double>() {
    return __longlong_as_double(0x7ff8000000000000LL);
}

__device__ __forceinline__ long long first_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}

__device__ __forceinline__ long long grid_stride() {
    return (long long)blockDim.x * gridDim.x;
}

template <typename T> __device__ __forceinline__ T warp_sum(T value) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    }
    return value;
}

template <typename T> __device__ __forceinline__ T warp_max(T value) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        value = device_max(value, __shfl_xor_sync(0xffffffffu, value, offset));
    }
    return value;
}

// Sum over the block, returned to every thread. blockDim.x is a multiple of
// 32 (at most 1024); `scratch` is 32 values of shared memory.
template <typename T> __device__ T block_sum(T value, T *scratch) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    value = warp_sum(value);
    // Let every thread finish reading scratch from the previous reduction.
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = value;
    }
    __syncthreads();
    value = lane < blockDim.x / 32 ? scratch[lane] : T(0);
    return warp_sum(value);
}

// Maximum over the block, returned to every thread (same rules as block_sum).
template <typename T> __device__ T block_max(T value, T *scratch) {
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    value = warp_max(value);
    __syncthreads();
    if (lane == 0) {
        scratch[warp] = value;
    }
    __syncthreads();
    value = lane < blockDim.x / 32 ? scratch[lane] : scratch[0];
    return warp_max(value);
}

#endif  // MPIPIPE_COMMON_CUH
