// swiglu on the CPU: OpenMP threads over blocks of elements; AVX2 eight at a time with the
// reference's operations (avx2_math.h), else the reference on each block.
#include <omp.h>

#include <algorithm>

#include "common/avx2_math.h"
#include "common/load_element.h"
#include "swiglu_impl.h"

namespace shardlora::kernels {
namespace {

using avx2::at;

constexpr int64_t kBlock = 4096;  // a multiple of 8: only the last block has a tail

template <typename Body>
void for_blocks(int64_t count, Body&& body) {
  const int64_t blocks = (count + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static)
  for (int64_t block = 0; block < blocks; ++block) body(block * kBlock, std::min(kBlock, count - block * kBlock));
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 void forward_avx2(const void* gate, const void* up, void* y, int64_t count) {
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 x = avx2::load8<kDType>(at<kDType>(gate, i));
    const __m256 silu = avx2::round_to<kDType>(_mm256_mul_ps(x, avx2::sigmoid_approx(x)));
    avx2::store8<kDType>(at<kDType>(y, i), _mm256_mul_ps(silu, avx2::load8<kDType>(at<kDType>(up, i))));
  }
  if (i < count) swiglu_forward_ref(at<kDType>(gate, i), at<kDType>(up, i), at<kDType>(y, i), count - i, kDType);
}

template <DType kDType>
SHARDLORA_TARGET_AVX2 void backward_avx2(const void* dy, const void* gate, const void* up, void* dg, void* du,
                                         int64_t count) {
  const __m256 one = _mm256_set1_ps(1.0f);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    const __m256 x = avx2::load8<kDType>(at<kDType>(gate, i)), u = avx2::load8<kDType>(at<kDType>(up, i));
    const __m256 grad = avx2::load8<kDType>(at<kDType>(dy, i));
    const __m256 s = avx2::sigmoid_approx(x);
    const __m256 silu = avx2::round_to<kDType>(_mm256_mul_ps(x, s));
    const __m256 slope = _mm256_mul_ps(s, _mm256_add_ps(one, _mm256_mul_ps(x, _mm256_sub_ps(one, s))));
    avx2::store8<kDType>(at<kDType>(dg, i), _mm256_mul_ps(_mm256_mul_ps(grad, u), slope));
    avx2::store8<kDType>(at<kDType>(du, i), _mm256_mul_ps(grad, silu));
  }
  if (i < count) {
    swiglu_backward_ref(at<kDType>(dy, i), at<kDType>(gate, i), at<kDType>(up, i), at<kDType>(dg, i), at<kDType>(du, i),
                        count - i, kDType);
  }
}

}  // namespace

void swiglu_forward_cpu(const void* gate, const void* up, void* y, int64_t count, DType dtype) {
  const bool simd = cpu_has_avx2();
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    for_blocks(count, [&](int64_t first, int64_t n) {
      if (simd) return forward_avx2<kDType>(at<kDType>(gate, first), at<kDType>(up, first), at<kDType>(y, first), n);
      swiglu_forward_ref(at<kDType>(gate, first), at<kDType>(up, first), at<kDType>(y, first), n, dtype);
    });
  });
}

void swiglu_backward_cpu(const void* grad_y, const void* gate, const void* up, void* grad_gate, void* grad_up,
                         int64_t count, DType dtype) {
  const bool simd = cpu_has_avx2();
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
    for_blocks(count, [&](int64_t first, int64_t n) {
      const void* dy = at<kDType>(grad_y, first);
      const void* g = at<kDType>(gate, first);
      const void* u = at<kDType>(up, first);
      if (simd) return backward_avx2<kDType>(dy, g, u, at<kDType>(grad_gate, first), at<kDType>(grad_up, first), n);
      swiglu_backward_ref(dy, g, u, at<kDType>(grad_gate, first), at<kDType>(grad_up, first), n, dtype);
    });
  });
}

}  // namespace shardlora::kernels
