// Softmax cross-entropy over a (rows, vocab) array of logits, one block per
// row. Rows whose target equals ignore_index add no loss and get zero
// gradient; a target outside [0, vocab) gives a NaN loss for its row.
// Logits of type T compute in S; probabilities and losses are kept in S
// (float for 2-byte logits), the gradient is written back in T.
#include "common.cuh"

template <typename T>
__device__ void cross_entropy_forward(typename compute_of<T>::type *probs,
                                      typename compute_of<T>::type *losses, const T *logits,
                                      const long long *targets, int vocab,
                                      long long ignore_index) {
    typedef typename compute_of<T>::type S;
    __shared__ S scratch[32];
    const T *logits_row = logits + (long long)blockIdx.x * vocab;
    S *probs_row = probs + (long long)blockIdx.x * vocab;

    S local_max = to_compute(logits_row[0]);
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        local_max = device_max(local_max, to_compute(logits_row[c]));
    }
    const S row_max = block_max(local_max, scratch);

    S local_sum = 0;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        const S shifted_exp = device_exp(to_compute(logits_row[c]) - row_max);
        probs_row[c] = shifted_exp;
        local_sum += shifted_exp;
    }
    const S row_sum = block_sum(local_sum, scratch);
    const S inverse_sum = S(1) / row_sum;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        probs_row[c] *= inverse_sum;
    }

    if (threadIdx.x == 0) {
        const long long target = targets[blockIdx.x];
        if (target == ignore_index) {
            losses[blockIdx.x] = S(0);
        } else if (target < 0 || target >= vocab) {
            losses[blockIdx.x] = not_a_number<S>();
        } else {
            // -log softmax[target] = log(sum exp(logits - max)) + max - logits[target]
            losses[blockIdx.x] = device_log(row_sum) + row_max - to_compute(logits_row[target]);
        }
    }
}

// dlogits = (probs - onehot(target)) * scale, or 0 on ignored rows. For float and
// double, dlogits may be probs itself (the update is in place, element by element).
template <typename T>
__device__ void cross_entropy_backward(T *dlogits, const typename compute_of<T>::type *probs,
                                       const long long *targets, int vocab,
                                       long long ignore_index,
                                       typename compute_of<T>::type scale) {
    typedef typename compute_of<T>::type S;
    const long long offset = (long long)blockIdx.x * vocab;
    const long long target = targets[blockIdx.x];
    const bool counted = target != ignore_index;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x) {
        const S gradient = counted ? (probs[offset + c] - (c == target ? S(1) : S(0))) * scale
                                   : S(0);
        dlogits[offset + c] = to_element<T>(gradient);
    }
}

#define CROSS_ENTROPY_ENTRIES(FLAVOUR, T, S)                                                   \
    extern "C" __global__ void cross_entropy_forward_##FLAVOUR(                                \
        S *probs, S *losses, const T *logits, const long long *targets, int vocab,             \
        long long ignore_index) {                                                              \
        cross_entropy_forward(probs, losses, logits, targets, vocab, ignore_index);           \
    }                                                                                          \
    extern "C" __global__ void cross_entropy_backward_##FLAVOUR(                               \
        T *dlogits, const S *probs, const long long *targets, int vocab,                       \
        long long ignore_index, S scale) {                                                     \
        cross_entropy_backward(dlogits, probs, targets, vocab, ignore_index, scale);          \
    }

CROSS_ENTROPY_ENTRIES(float, float, float)
CROSS_ENTROPY_ENTRIES(double, double, double)
CROSS_ENTROPY_ENTRIES(half, half_bits, float)
CROSS_ENTROPY_ENTRIES(bfloat16, bfloat16_bits, float)
