// Softmax cross-entropy over a (rows, vocab) array of logits, one block per
// row. Rows whose target equals ignore_index add no loss and get zero
// gradient; a target outside [0, vocab) gives a NaN loss for its row.
#include "common.cuh"

template <typename T>
__device__ void cross_entropy_forward(T *probs, T *losses, const T *logits,
                                      const long long *targets, int vocab,
                                      long long ignore_index) {
    __shared__ T scratch[32];
    const T *logits_row = logits + (long long)blockIdx.x * vocab;
    T *probs_row = probs + (long long)blockIdx.x * vocab;

    T local_max = logits_row[0];
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        local_max = device_max(local_max, logits_row[c]);
    }
    const T row_max = block_max(local_max, scratch);

    T local_sum = 0;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        const T shifted_exp = device_exp(logits_row[c] - row_max);
        probs_row[c] = shifted_exp;
        local_sum += shifted_exp;
    }
    const T row_sum = block_sum(local_sum, scratch);
    const T inverse_sum = T(1) / row_sum;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        probs_row[c] *= inverse_sum;
    }

    if (threadIdx.x == 0) {
        const long long target = targets[blockIdx.x];
        if (target == ignore_index) {
            losses[blockIdx.x] = T(0);
        } else if (target < 0 || target >= vocab) {
            losses[blockIdx.x] = not_a_number<T>();
        } else {
            // -log softmax[target] = log(sum exp(logits - max)) + max - logits[target]
            losses[blockIdx.x] = device_log(row_sum) + row_max - logits_row[target];
        }
    }
}

// In place: probs becomes (probs - onehot(target)) * scale, or 0 on ignored rows.
template <typename T>
__device__ void cross_entropy_backward(T *probs, const long long *targets, int vocab,
                                       long long ignore_index, T scale) {
    T *row = probs + (long long)blockIdx.x * vocab;
    const long long target = targets[blockIdx.x];
    const bool counted = target != ignore_index;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        row[c] = counted ? (row[c] - (c == target ? T(1) : T(0))) * scale : T(0);
    }
}

extern "C" __global__ void cross_entropy_forward_float(float *probs, float *losses,
                                                       const float *logits,
                                                       const long long *targets, int vocab,
                                                       long long ignore_index) {
    cross_entropy_forward(probs, losses, logits, targets, vocab, ignore_index);
}
extern "C" __global__ void cross_entropy_forward_double(double *probs, double *losses,
                                                        const double *logits,
                                                        const long long *targets, int vocab,
                                                        long long ignore_index) {
    cross_entropy_forward(probs, losses, logits, targets, vocab, ignore_index);
}

extern "C" __global__ void cross_entropy_backward_float(float *probs, const long long *targets,
                                                        int vocab, long long ignore_index,
                                                        float scale) {
    cross_entropy_backward(probs, targets, vocab, ignore_index, scale);
}
extern "C" __global__ void cross_entropy_backward_double(double *probs,
                                                         const long long *targets, int vocab,
                                                         long long ignore_index, double scale) {
    cross_entropy_backward(probs, targets, vocab, ignore_index, scale);
}
