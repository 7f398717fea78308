// One fused AdamW step (PyTorch semantics) on flat arrays, elementwise.
// The host folds the step's scalars: decay_factor = 1 - lr * weight_decay,
// step_size = lr / (1 - beta1^step), sqrt_bias_correction2 = sqrt(1 - beta2^step).
#include "common.cuh"

template <typename T>
__device__ void adamw_update(T *param, const T *grad, T *m, T *v, long long n, T beta1, T beta2,
                             T eps, T grad_scale, T decay_factor, T step_size,
                             T sqrt_bias_correction2) {
    for (long long i = first_index(); i < n; i += grid_stride()) {
        const T g = grad[i] * grad_scale;
        const T m_new = beta1 * m[i] + (T(1) - beta1) * g;
        const T v_new = beta2 * v[i] + (T(1) - beta2) * g * g;
        m[i] = m_new;
        v[i] = v_new;
        const T denominator = device_sqrt(v_new) / sqrt_bias_correction2 + eps;
        param[i] = param[i] * decay_factor - step_size * m_new / denominator;
    }
}

extern "C" __global__ void adamw_update_float(float *param, const float *grad, float *m, float *v,
                                              long long n, float beta1, float beta2, float eps,
                                              float grad_scale, float decay_factor,
                                              float step_size, float sqrt_bias_correction2) {
    adamw_update(param, grad, m, v, n, beta1, beta2, eps, grad_scale, decay_factor, step_size,
                 sqrt_bias_correction2);
}
extern "C" __global__ void adamw_update_double(double *param, const double *grad, double *m,
                                               double *v, long long n, double beta1,
                                               double beta2, double eps, double grad_scale,
                                               double decay_factor, double step_size,
                                               double sqrt_bias_correction2) {
    adamw_update(param, grad, m, v, n, beta1, beta2, eps, grad_scale, decay_factor, step_size,
                 sqrt_bias_correction2);
}
