// LayerNorm over the last axis of a (rows, columns) array.
// Forward and the input half of the backward run one block per row; the
// weight half reduces over rows in two deterministic passes: per-block
// partial sums of a tile of rows, then one thread per column adds them up.
// x, y, weight and bias are of type T; the statistics (mean, rstd), the
// partial sums and the weight gradients are of the type T computes in, S
// (float for 2-byte T: the gradients are the float32 master gradients).
#include "common.cuh"

template <typename T>
__device__ void layernorm_forward(T *y, typename compute_of<T>::type *mean_out,
                                  typename compute_of<T>::type *rstd_out, const T *x,
                                  const T *weight, const T *bias, int columns,
                                  typename compute_of<T>::type eps) {
    typedef typename compute_of<T>::type S;
    __shared__ S scratch[32];
    const T *x_row = x + (long long)blockIdx.x * columns;
    T *y_row = y + (long long)blockIdx.x * columns;

    S sum = 0;
    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        sum += to_compute(x_row[c]);
    }
    const S mean = block_sum(sum, scratch) / columns;

    S squares = 0;
    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        const S centered = to_compute(x_row[c]) - mean;
        squares += centered * centered;
    }
    const S rstd = S(1) / device_sqrt(block_sum(squares, scratch) / columns + eps);

    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        y_row[c] = to_element<T>((to_compute(x_row[c]) - mean) * rstd * to_compute(weight[c]) +
                                 to_compute(bias[c]));
    }
    if (threadIdx.x == 0) {
        mean_out[blockIdx.x] = mean;
        rstd_out[blockIdx.x] = rstd;
    }
}

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * weight
template <typename T>
__device__ void layernorm_backward_input(T *dx, const T *dy, const T *x, const T *weight,
                                         const typename compute_of<T>::type *mean,
                                         const typename compute_of<T>::type *rstd, int columns) {
    typedef typename compute_of<T>::type S;
    __shared__ S scratch[32];
    const long long offset = (long long)blockIdx.x * columns;
    const S row_mean = mean[blockIdx.x];
    const S row_rstd = rstd[blockIdx.x];

    S sum_dxhat = 0;
    S sum_dxhat_xhat = 0;
    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        const S dxhat = to_compute(dy[offset + c]) * to_compute(weight[c]);
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * (to_compute(x[offset + c]) - row_mean) * row_rstd;
    }
    const S mean_dxhat = block_sum(sum_dxhat, scratch) / columns;
    const S mean_dxhat_xhat = block_sum(sum_dxhat_xhat, scratch) / columns;

    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        const S xhat = (to_compute(x[offset + c]) - row_mean) * row_rstd;
        const S dxhat = to_compute(dy[offset + c]) * to_compute(weight[c]);
        dx[offset + c] = to_element<T>((dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * row_rstd);
    }
}

// Block (32, 8) covers 32 columns; grid (column tiles, row tiles). Each block
// writes its partial sums to row `blockIdx.y` of the (row tiles, columns) buffers.
template <typename T>
__device__ void layernorm_weight_partials(typename compute_of<T>::type *partial_dweight,
                                          typename compute_of<T>::type *partial_dbias,
                                          const T *dy, const T *x,
                                          const typename compute_of<T>::type *mean,
                                          const typename compute_of<T>::type *rstd,
                                          long long rows, int columns) {
    typedef typename compute_of<T>::type S;
    __shared__ S dweight_tile[8][32];
    __shared__ S dbias_tile[8][32];
    const int column = blockIdx.x * 32 + threadIdx.x;
    S dweight = 0;
    S dbias = 0;
    if (column < columns) {
        for (long long row = (long long)blockIdx.y * 8 + threadIdx.y; row < rows;
             row += (long long)gridDim.y * 8) {
            const S gradient = to_compute(dy[row * columns + column]);
            dweight += gradient * (to_compute(x[row * columns + column]) - mean[row]) * rstd[row];
            dbias += gradient;
        }
    }
    dweight_tile[threadIdx.y][threadIdx.x] = dweight;
    dbias_tile[threadIdx.y][threadIdx.x] = dbias;
    __syncthreads();
    if (threadIdx.y == 0 && column < columns) {
        for (int k = 1; k < 8; ++k) {
            dweight += dweight_tile[k][threadIdx.x];
            dbias += dbias_tile[k][threadIdx.x];
        }
        partial_dweight[(long long)blockIdx.y * columns + column] = dweight;
        partial_dbias[(long long)blockIdx.y * columns + column] = dbias;
    }
}

template <typename S>
__device__ void layernorm_weight_accumulate(S *dweight, S *dbias, const S *partial_dweight,
                                            const S *partial_dbias, int tiles, int columns) {
    const int column = blockIdx.x * blockDim.x + threadIdx.x;
    if (column >= columns) {
        return;
    }
    S dweight_sum = 0;
    S dbias_sum = 0;
    for (int tile = 0; tile < tiles; ++tile) {
        dweight_sum += partial_dweight[(long long)tile * columns + column];
        dbias_sum += partial_dbias[(long long)tile * columns + column];
    }
    dweight[column] += dweight_sum;
    dbias[column] += dbias_sum;
}

#define LAYERNORM_ENTRIES(FLAVOUR, T, S)                                                       \
    extern "C" __global__ void layernorm_forward_##FLAVOUR(                                    \
        T *y, S *mean, S *rstd, const T *x, const T *weight, const T *bias, int columns,       \
        S eps) {                                                                               \
        layernorm_forward(y, mean, rstd, x, weight, bias, columns, eps);                       \
    }                                                                                          \
    extern "C" __global__ void layernorm_backward_input_##FLAVOUR(                             \
        T *dx, const T *dy, const T *x, const T *weight, const S *mean, const S *rstd,         \
        int columns) {                                                                         \
        layernorm_backward_input(dx, dy, x, weight, mean, rstd, columns);                      \
    }                                                                                          \
    extern "C" __global__ void layernorm_weight_partials_##FLAVOUR(                            \
        S *partial_dweight, S *partial_dbias, const T *dy, const T *x, const S *mean,          \
        const S *rstd, long long rows, int columns) {                                          \
        layernorm_weight_partials(partial_dweight, partial_dbias, dy, x, mean, rstd, rows,     \
                                  columns);                                                    \
    }

LAYERNORM_ENTRIES(float, float, float)
LAYERNORM_ENTRIES(double, double, double)
LAYERNORM_ENTRIES(half, half_bits, float)
LAYERNORM_ENTRIES(bfloat16, bfloat16_bits, float)

// The last pass only sees partial sums and gradients, in S.
extern "C" __global__ void layernorm_weight_accumulate_float(float *dweight, float *dbias,
                                                             const float *partial_dweight,
                                                             const float *partial_dbias,
                                                             int tiles, int columns) {
    layernorm_weight_accumulate(dweight, dbias, partial_dweight, partial_dbias, tiles, columns);
}
extern "C" __global__ void layernorm_weight_accumulate_double(double *dweight, double *dbias,
                                                              const double *partial_dweight,
                                                              const double *partial_dbias,
                                                              int tiles, int columns) {
    layernorm_weight_accumulate(dweight, dbias, partial_dweight, partial_dbias, tiles, columns);
}
