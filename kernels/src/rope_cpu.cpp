// rope_apply on the CPU: OpenMP threads over tokens; per head AVX2 eight element pairs at a
// time with the reference's operations, else the reference on each token.
#include <omp.h>

#include "common/avx2_math.h"
#include "common/load_element.h"
#include "rope_impl.h"

namespace shardlora::kernels {
namespace {

using avx2::at;

// One token's heads; the last pairs of a head (half % 8) through partial vectors.
template <DType kDType>
SHARDLORA_TARGET_AVX2 void rotate_token_avx2(void* token, const void* cos, const void* sin, RopeShape shape,
                                             RopeDirection direction) {
  const int64_t half = shape.head_dim / 2;
  const __m256 sign = _mm256_set1_ps(direction == RopeDirection::Forward ? 0.0f : -0.0f);  // xor negates s
  for (int64_t h = 0; h < shape.heads; ++h) {
    void* head = at<kDType>(token, h * shape.head_dim);
    for (int64_t i = 0; i < half; i += 8) {
      const int64_t n = half - i < 8 ? half - i : 8;
      const __m256 c = avx2::load_n<kDType>(cos, i, n);
      const __m256 s = _mm256_xor_ps(avx2::load_n<kDType>(sin, i, n), sign);
      const __m256 x1 = avx2::load_n<kDType>(head, i, n), x2 = avx2::load_n<kDType>(head, i + half, n);
      avx2::store_n<kDType>(head, i, n, _mm256_sub_ps(_mm256_mul_ps(x1, c), _mm256_mul_ps(x2, s)));
      avx2::store_n<kDType>(head, i + half, n, _mm256_add_ps(_mm256_mul_ps(x2, c), _mm256_mul_ps(x1, s)));
    }
  }
}

}  // namespace

void rope_apply_cpu(void* x, const void* cos, const void* sin, RopeShape shape, RopeDirection direction, DType dtype) {
  const bool simd = cpu_has_avx2();
  const int64_t half = shape.head_dim / 2;
  dispatch_float_dtype(dtype, [&](auto tag) {
    constexpr DType kDType = decltype(tag)::value;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < shape.tokens; ++t) {
      void* token = at<kDType>(x, t * shape.heads * shape.head_dim);
      const void* c = at<kDType>(cos, t * half);
      const void* s = at<kDType>(sin, t * half);
      if (simd) {
        rotate_token_avx2<kDType>(token, c, s, shape, direction);
      } else {
        rope_apply_ref(token, c, s, {1, shape.heads, shape.head_dim}, direction, dtype);
      }
    }
  });
}

}  // namespace shardlora::kernels
