// GELU, GPT-2's tanh approximation, forward and backward, elementwise.
// Elements of type T (float, double, half_bits, bfloat16_bits) compute in S.
#include "common.cuh"

template <typename S> __device__ __forceinline__ S gelu_inner(S x) {
    const S scale = S(0.7978845608028654);  // sqrt(2 / pi)
    return scale * (x + S(0.044715) * x * x * x);
}

template <typename T> __device__ void gelu_forward(T *y, const T *x, long long n) {
    typedef typename compute_of<T>::type S;
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const S value = to_compute(x[i]);
        y[i] = to_element<T>(S(0.5) * value * (S(1) + device_tanh(gelu_inner(value))));
    }
}

template <typename T> __device__ void gelu_backward(T *dx, const T *x, const T *dy, long long n) {
    typedef typename compute_of<T>::type S;
    const S scale = S(0.7978845608028654);
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const S value = to_compute(x[i]);
        const S tanh_inner = device_tanh(gelu_inner(value));
        const S dinner = scale * (S(1) + S(3 * 0.044715) * value * value);
        const S slope = S(0.5) * (S(1) + tanh_inner) +
                        S(0.5) * value * (S(1) - tanh_inner * tanh_inner) * dinner;
        dx[i] = to_element<T>(to_compute(dy[i]) * slope);
    }
}

#define GELU_ENTRIES(FLAVOUR, T)                                                               \
    extern "C" __global__ void gelu_forward_##FLAVOUR(T *y, const T *x, long long n) {         \
        gelu_forward(y, x, n);                                                                 \
    }                                                                                          \
    extern "C" __global__ void gelu_backward_##FLAVOUR(T *dx, const T *x, const T *dy,        \
                                                       long long n) {                          \
        gelu_backward(dx, x, dy, n);                                                           \
    }

GELU_ENTRIES(float, float)
GELU_ENTRIES(double, double)
GELU_ENTRIES(half, half_bits)
GELU_ENTRIES(bfloat16, bfloat16_bits)
