// Helpers every kernel file includes: the element types and the type each
// computes in, float/double overloads of the math functions, a grid-stride
// index, and block-wide sum and max reductions.
#ifndef MPIPIPE_COMMON_CUH
#define MPIPIPE_COMMON_CUH

// 2-byte floats are stored as their bits and converted in registers, so no
// CUDA half header is needed (NVRTC compiles one string). They compute in float.
struct half_bits {
    unsigned short bits;
};
struct bfloat16_bits {
    unsigned short bits;
};

template <typename T> struct compute_of {
    typedef T type;  // float and double compute in themselves
};
template <> struct compute_of<half_bits> {
    typedef float type;
};
template <> struct compute_of<bfloat16_bits> {
    typedef float type;
};

__device__ __forceinline__ float to_compute(float value) { return value; }
__device__ __forceinline__ double to_compute(double value) { return value; }
__device__ __forceinline__ float to_compute(half_bits value) {
    float result;
    asm("cvt.f32.f16 %0, %1;" : "=f"(result) : "h"(value.bits));
    return result;
}
__device__ __forceinline__ float to_compute(bfloat16_bits value) {
    return __uint_as_float(((unsigned int)value.bits) << 16);
}

// The element of type T nearest to a computed value (round to nearest even).
template <typename T> __device__ __forceinline__ T to_element(typename compute_of<T>::type value) {
    return value;
}
template <> __device__ __forceinline__ half_bits to_element<half_bits>(float value) {
    half_bits result;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(result.bits) : "f"(value));
    return result;
}
template <> __device__ __forceinline__ bfloat16_bits to_element<bfloat16_bits>(float value) {
    const unsigned int bits = __float_as_uint(value);
    bfloat16_bits result;
    if ((bits & 0x7fffffffu) > 0x7f800000u) {
        result.bits = (unsigned short)((bits >> 16) | 0x0040u);  // NaN stays a (quiet) NaN
    } else {
        result.bits = (unsigned short)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    }
    return result;
}

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
