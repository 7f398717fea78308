// LayerNorm over the last axis of a (rows, columns) array.
// Forward and the input half of the backward run one block per row; the
// weight half reduces over rows in two deterministic passes: per-block
// partial sums of a tile of rows, then one thread per column adds them up.
#include "common.cuh"

template <typename T>
__device__ void layernorm_forward(T *y, T *mean_out, T *rstd_out, const T *x, const T *weight,
                                  const T *bias, int columns, T eps) {
    __shared__ T scratch[32];
    const T *x_row = x + (long long)blockIdx.x * columns;
    T *y_row = y + (long long)blockIdx.x * columns;

    T sum = 0;
    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        sum += x_row[c];
    }
    const T mean = block_sum(sum, scratch) / columns;

    T squares = 0;
    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        const T centered = x_row[c] - mean;
        squares += centered * centered;
    }
    const T rstd = T(1) / device_sqrt(block_sum(squares, scratch) / columns + eps);

    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        y_row[c] = (x_row[c] - mean) * rstd * weight[c] + bias[c];
    }
    if (threadIdx.x == 0) {
        mean_out[blockIdx.x] = mean;
        rstd_out[blockIdx.x] = rstd;
    }
}

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * weight
template <typename T>
__device__ void layernorm_backward_input(T *dx, const T *dy, const T *x, const T *weight,
                                         const T *mean, const T *rstd, int columns) {
    __shared__ T scratch[32];
    const long long offset = (long long)blockIdx.x * columns;
    const T row_mean = mean[blockIdx.x];
    const T row_rstd = rstd[blockIdx.x];

    T sum_dxhat = 0;
    T sum_dxhat_xhat = 0;
    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        const T dxhat = dy[offset + c] * weight[c];
        sum_dxhat += dxhat;
        sum_dxhat_xhat += dxhat * (x[offset + c] - row_mean) * row_rstd;
    }
    const T mean_dxhat = block_sum(sum_dxhat, scratch) / columns;
    const T mean_dxhat_xhat = block_sum(sum_dxhat_xhat, scratch) / columns;

    for (int c = threadIdx.x; c < columns; c += blockDim.x) {
        const T xhat = (x[offset + c] - row_mean) * row_rstd;
        const T dxhat = dy[offset + c] * weight[c];
        dx[offset + c] = (dxhat - mean_dxhat - xhat * mean_dxhat_xhat) * row_rstd;
    }
}

// Block (32, 8) covers 32 columns; grid (column tiles, row tiles). Each block
// writes its partial sums to row `blockIdx.y` of the (row tiles, columns) buffers.
template <typename T>
__device__ void layernorm_weight_partials(T *partial_dweight, T *partial_dbias, const T *dy,
                                          const T *x, const T *mean, const T *rstd,
                                          long long rows, int columns) {
    __shared__ T dweight_tile[8][32];
    __shared__ T dbias_tile[8][32];
    const int column = blockIdx.x * 32 + threadIdx.x;
    T dweight = 0;
    T dbias = 0;
    if (column < columns) {
        for (long long row = (long long)blockIdx.y * 8 + threadIdx.y; row < rows;
             row += (long long)gridDim.y * 8) {
            const T gradient = dy[row * columns + column];
            dweight += gradient * (x[row * columns + column] - mean[row]) * rstd[row];
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

template <typename T>
__device__ void layernorm_weight_accumulate(T *dweight, T *dbias, const T *partial_dweight,
                                            const T *partial_dbias, int tiles, int columns) {
    const int column = blockIdx.x * blockDim.x + threadIdx.x;
    if (column >= columns) {
        return;
    }
    T dweight_sum = 0;
    T dbias_sum = 0;
    for (int tile = 0; tile < tiles; ++tile) {
        dweight_sum += partial_dweight[(long long)tile * columns + column];
        dbias_sum += partial_dbias[(long long)tile * columns + column];
    }
    dweight[column] += dweight_sum;
    dbias[column] += dbias_sum;
}

extern "C" __global__ void layernorm_forward_float(float *y, float *mean, float *rstd,
                                                   const float *x, const float *weight,
                                                   const float *bias, int columns, float eps) {
    layernorm_forward(y, mean, rstd, x, weight, bias, columns, eps);
}
extern "C" __global__ void layernorm_forward_double(double *y, double *mean, double *rstd,
                                                    const double *x, const double *weight,
                                                    const double *bias, int columns, double eps) {
    layernorm_forward(y, mean, rstd, x, weight, bias, columns, eps);
}

extern "C" __global__ void layernorm_backward_input_float(float *dx, const float *dy,
                                                          const float *x, const float *weight,
                                                          const float *mean, const float *rstd,
                                                          int columns) {
    layernorm_backward_input(dx, dy, x, weight, mean, rstd, columns);
}
extern "C" __global__ void layernorm_backward_input_double(double *dx, const double *dy,
                                                           const double *x, const double *weight,
                                                           const double *mean, const double *rstd,
                                                           int columns) {
    layernorm_backward_input(dx, dy, x, weight, mean, rstd, columns);
}

extern "C" __global__ void layernorm_weight_partials_float(float *partial_dweight,
                                                           float *partial_dbias, const float *dy,
                                                           const float *x, const float *mean,
                                                           const float *rstd, long long rows,
                                                           int columns) {
    layernorm_weight_partials(partial_dweight, partial_dbias, dy, x, mean, rstd, rows, columns);
}
extern "C" __global__ void layernorm_weight_partials_double(double *partial_dweight,
                                                            double *partial_dbias,
                                                            const double *dy, const double *x,
                                                            const double *mean,
                                                            const double *rstd, long long rows,
                                                            int columns) {
    layernorm_weight_partials(partial_dweight, partial_dbias, dy, x, mean, rstd, rows, columns);
}

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
