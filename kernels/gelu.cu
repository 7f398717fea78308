// GELU, GPT-2's tanh approximation, forward and backward, elementwise.
#include "common.cuh"

template <typename T> __device__ __forceinline__ T gelu_inner(T x) {
    const T scale = T(0.7978845608028654);  // sqrt(2 / pi)
    return scale * (x + T(0.044715) * x * x * x);
}

template <typename T> __device__ void gelu_forward(T *y, const T *x, long long n) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const T value = x[i];
        y[i] = T(0.5) * value * (T(1) + device_tanh(gelu_inner(value)));
    }
}

template <typename T> __device__ void gelu_backward(T *dx, const T *x, const T *dy, long long n) {
    const T scale = T(0.7978845608028654);
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const T value = x[i];
        const T tanh_inner = device_tanh(gelu_inner(value));
        const T dinner = scale * (T(1) + T(3 * 0.044715) * value * value);
        const T slope = T(0.5) * (T(1) + tanh_inner) +
                        T(0.5) * value * (T(1) - tanh_inner * tanh_inner) * dinner;
        dx[i] = dy[i] * slope;
    }
}

extern "C" __global__ void gelu_forward_float(float *y, const float *x, long long n) {
    gelu_forward(y, x, n);
}
extern "C" __global__ void gelu_forward_double(double *y, const double *x, long long n) {
    gelu_forward(y, x, n);
}
extern "C" __global__ void gelu_backward_float(float *dx, const float *x, const float *dy,
                                               long long n) {
    gelu_backward(dx, x, dy, n);
}
extern "C" __global__ void gelu_backward_double(double *dx, const double *x, const double *dy,
                                                long long n) {
    gelu_backward(dx, x, dy, n);
}
