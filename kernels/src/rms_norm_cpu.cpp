// rms_norm on the CPU: OpenMP threads over rows (the weight gradient over column blocks,
// each summing its columns over the rows in order). Per row, AVX2 eight columns at a
// time with float_math.h's lane order, else the reference on the thread's rows: either
// way the reference's bits.
#include <omp.h>

#include <algorithm>
#include <cmath>

#include "common/avx2_math.h"
#include "common/load_element.h"
#include "rms_norm_impl.h"

namespace shardlora::kernels {
namespace {

using avx2::at;

// Calls body(first_row, row_count) on blocks of rows spread over the threads.
template <typename Body>
void for_row_blocks(int64_t rows, Body&& body) {
  constexpr int64_t kRowsPerBlock = 16;
  const int64_t blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t first = block * kRowsPerBlock;
    body(first, std::min(kRowsPerBlock, rows - first));
  }
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 void forward_row_avx2(const void* x, const void* w, void* y, float* inv_rms, int64_t cols,
                                            float eps) {
  __m256 lanes = _mm256_setzero_ps();  // past the row's end the lanes add +0
  for (int64_t c = 0; c < cols; c += 8) {
    const __m256 v = avx2::load_n<kDType>(x, c, std::min<int64_t>(8, cols - c));
    lanes = _mm256_add_ps(lanes, _mm256_mul_ps(v, v));
  }
  const float scale = 1.0f / std::sqrt(avx2::combine_lanes(lanes) / static_cast<float>(cols) + eps);
  *inv_rms = scale;
  const __m256 s = _mm256_set1_ps(scale);
  for (int64_t c = 0; c < cols; c += 8) {
    const int64_t n = std::min<int64_t>(8, cols - c);
    const __m256 normed = avx2::round_to<kDType>(_mm256_mul_ps(avx2::load_n<kDType>(x, c, n), s));
    avx2::store_n<kDType>(y, c, n, _mm256_mul_ps(avx2::load_n<kDType>(w, c, n), normed));
  }
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 void backward_row_avx2(const void* dy, const void* x, const void* w, float inv_rms, void* dx,
                                             int64_t cols) {
  const __m256 s = _mm256_set1_ps(inv_rms);
  __m256 lanes = _mm256_setzero_ps();
  for (int64_t c = 0; c < cols; c += 8) {
    const int64_t n = std::min<int64_t>(8, cols - c);
    const __m256 g = _mm256_mul_ps(avx2::load_n<kDType>(dy, c, n), avx2::load_n<kDType>(w, c, n));
    lanes = _mm256_add_ps(lanes, _mm256_mul_ps(g, _mm256_mul_ps(avx2::load_n<kDType>(x, c, n), s)));
  }
  const __m256 mean = _mm256_set1_ps(avx2::combine_lanes(lanes) / static_cast<float>(cols));
  for (int64_t c = 0; c < cols; c += 8) {
    const int64_t n = std::min<int64_t>(8, cols - c);
    const __m256 g = _mm256_mul_ps(avx2::load_n<kDType>(dy, c, n), avx2::load_n<kDType>(w, c, n));
    const __m256 normed = _mm256_mul_ps(avx2::load_n<kDType>(x, c, n), s);
    avx2::store_n<kDType>(dx, c, n, _mm256_mul_ps(s, _mm256_sub_ps(g, _mm256_mul_ps(normed, mean))));
  }
}

// grad_weight[c] for c in [first, first + count): the rows summed in order, each lane a column.
template <DType kDType>
SHARDLORA_TARGET_AVX2 void weight_grad_columns_avx2(const void* dy, const void* x, const float* inv_rms,
                                                    RmsNormShape shape, int64_t first, int64_t count, float* dw) {
  for (int64_t c = first; c < first + count; c += 8) {
    const int64_t n = std::min<int64_t>(8, first + count - c);
    __m256 sum = _mm256_setzero_ps();
    for (int64_t r = 0; r < shape.rows; ++r) {
      const int64_t i = r * shape.cols + c;
      const __m256 normed = avx2::round_to<kDType>(_mm256_mul_ps(avx2::load_n<kDType>(x, i, n), _mm256_set1_ps(inv_rms[r])));
      sum = _mm256_add_ps(sum, _mm256_mul_ps(avx2::load_n<kDType>(dy, i, n), normed));
    }
    avx2::store_n<DType::F32>(dw, c, n, sum);
  }
}

template <DType kDType>
void weight_grad_columns_scalar(const void* dy, const void* x, const float* inv_rms, RmsNormShape shape, int64_t first,
                                int64_t count, float* dw) {
  using In = InputElement<kDType>;
  const auto* dys = static_cast<const typename In::type*>(dy);
  const auto* xs = static_cast<const typename In::type*>(x);
  for (int64_t c = first; c < first + count; ++c) {
    float sum = 0.0f;
    for (int64_t r = 0; r < shape.rows; ++r) {
      const int64_t i = r * shape.cols + c;
      const float normed = In::to_float(OutputElement<kDType>::from_float(In::to_float(xs[i]) * inv_rms[r]));
      sum += In::to_float(dys[i]) * normed;
    }
    dw[c] = sum;
  }
}

}  // namespace

void rms_norm_forward_cpu(const void* x, const void* weight, void* y, float* inv_rms, RmsNormShape shape, float eps,
                          DType dtype) {
  const bool simd = cpu_has_avx2();
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    for_row_blocks(shape.rows, [&](int64_t first, int64_t count) {
      const int64_t offset = first * shape.cols;
      if (!simd) {
        return rms_norm_forward_ref(at<kDType>(x, offset), weight, at<kDType>(y, offset), inv_rms + first,
                                    {count, shape.cols}, eps, dtype);
      }
      for (int64_t r = first; r < first + count; ++r) {
        forward_row_avx2<kDType>(at<kDType>(x, r * shape.cols), weight, at<kDType>(y, r * shape.cols), inv_rms + r,
                                 shape.cols, eps);
      }
    });
  });
}

void rms_norm_backward_cpu(const void* grad_y, const void* x, const void* weight, const float* inv_rms, void* grad_x,
                           float* grad_weight, RmsNormShape shape, DType dtype) {
  const bool simd = cpu_has_avx2();
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    for_row_blocks(shape.rows, [&](int64_t first, int64_t count) {
      const int64_t offset = first * shape.cols;
      if (!simd) {
        return rms_norm_backward_ref(at<kDType>(grad_y, offset), at<kDType>(x, offset), weight, inv_rms + first,
                                     at<kDType>(grad_x, offset), nullptr, {count, shape.cols}, dtype);
      }
      for (int64_t r = first; r < first + count; ++r) {
        const int64_t row = r * shape.cols;
        backward_row_avx2<kDType>(at<kDType>(grad_y, row), at<kDType>(x, row), weight, inv_rms[r],
                                  at<kDType>(grad_x, row), shape.cols);
      }
    });
    if (!grad_weight) return;
    constexpr int64_t kColumnsPerBlock = 64;
    const int64_t blocks = (shape.cols + kColumnsPerBlock - 1) / kColumnsPerBlock;
#pragma omp parallel for schedule(static)
    for (int64_t block = 0; block < blocks; ++block) {
      const int64_t first = block * kColumnsPerBlock, count = std::min(kColumnsPerBlock, shape.cols - first);
      if (simd) {
        weight_grad_columns_avx2<kDType>(grad_y, x, inv_rms, shape, first, count, grad_weight);
      } else {
        weight_grad_columns_scalar<kDType>(grad_y, x, inv_rms, shape, first, count, grad_weight);
      }
    }
  });
}

}  // namespace shardlora::kernels
