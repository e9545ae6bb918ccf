// CPU kernel for clockwork::group_norm_act.
//
// Statistics: one pass per (sample, group) accumulating sum and sum of squares of
// (x - pivot), pivot = the group's first element, so E[d^2] - E[d]^2 does not cancel
// catastrophically when |mean| >> std. Partial sums are fp32 over short chunks (vectorised),
// totals fp64. The epilogue folds rstd, weight, bias, scale and shift into one multiply-add per
// (sample, channel): a = (x - mean) * mul[b, c] + add[b, c] (centring before scaling avoids the
// cancellation of x * mul - mean * mul), then silu and residual, in one pass that reads x and
// writes y once.
//
// NCHW: a group is one contiguous span, so each (sample, group) task computes its statistics
// and normalises the span while it is still in cache. Channels-last: channels are the
// contiguous axis, so statistics are per-channel partial sums over blocks of pixels (the
// loops run along C), then every pixel row is normalised with per-channel coefficients.
//
// All arithmetic is fp32; fp16/bf16 elements are converted in the loops, on their raw 16-bit
// words, so every dtype vectorises.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "group_norm_inputs.h"

namespace clockwork {
namespace {

constexpr int64_t kChunk = 256;      // fp32 partial sums cover at most this many elements
constexpr int64_t kPixelBlock = 64;  // channels-last: pixels per partial-sum block and per epilogue task

// The extension is built for baseline x86-64 (SSE2); the row kernels are also compiled for
// AVX2 and AVX-512 and the loader picks the best the CPU supports (GCC function multiversioning).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VECTOR_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VECTOR_CLONES
#endif

inline int32_t float_bits(float f) {
  int32_t i;
  std::memcpy(&i, &f, sizeof i);
  return i;
}

inline float bits_float(int32_t i) {
  float f;
  std::memcpy(&f, &i, sizeof f);
  return f;
}

// mask ? a : b per bit, mask all ones or all zeros.
inline int32_t blend(int32_t mask, int32_t a, int32_t b) { return (a & mask) | (b & ~mask); }

// The elementwise math below is branch-free and clamps/selects on bit patterns: GCC will not
// if-convert float compares (they may trap under the default -ftrapping-math) nor selects whose
// arms it sinks float math into, and any branch or libm call (std::exp without -ffast-math)
// would keep the loops scalar.

// exp(z) for z <= 0 to ~2 ulp: Cephes expf, range-reduced by z = n ln 2 + r. z < -87 (and NaN)
// give exp(-87) ~ 1.6e-38: silu below needs no smaller value, and keeps NaN through its factor v.
inline float exp_nonpositive(float z) {
  constexpr int32_t kMinus87Bits = static_cast<int32_t>(0xC2AE0000u);  // -87.0f; keeps 2^n a normal float
  const int32_t z_bits = float_bits(z);
  z = bits_float(z_bits > kMinus87Bits ? kMinus87Bits : z_bits);  // for negative floats, larger bits = smaller value
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: the sum's low mantissa bits hold round(z / ln 2)
  const float t = z * 1.44269504088896341f + kRound;
  const float n = t - kRound;
  const float pow2 = bits_float((float_bits(t) - float_bits(kRound) + 127) << 23);  // 2^n
  const float r = (z - n * 0.693359375f) + n * 2.12194440e-4f;  // z - n ln 2 in two steps for precision
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return (p * r * r + r + 1.0f) * pow2;
}

// silu(v) = v * sigmoid(v) with sigmoid(v) = (v < 0 ? e : 1) / (1 + e), e = exp(-|v|) in (0, 1]:
// nothing overflows and both tails keep full relative precision.
inline float silu(float v) {
  const float e = exp_nonpositive(-std::fabs(v));
  const int32_t negative = float_bits(v) >> 31;  // all ones when the sign bit is set
  return v * bits_float(blend(negative, float_bits(e), float_bits(1.0f))) / (1.0f + e);
}

// ---- element storage: fp32 loads and stores for float, at::Half and at::BFloat16 ----
// c10's own Half/BFloat16 conversions do not vectorise (struct temporaries, branches), which left
// the 16-bit kernels ~8x slower than eager. These are the same algorithms (round to nearest even,
// subnormals, inf, NaN; bit-identical to c10) on the raw 16-bit words, with mask selects.
template <typename T>
struct Storage {
  using type = T;
};
template <>
struct Storage<at::Half> {
  using type = uint16_t;
};
template <>
struct Storage<at::BFloat16> {
  using type = uint16_t;
};
template <typename T>
using storage_t = typename Storage<T>::type;

template <typename T>
float to_float(storage_t<T> v);
template <typename T>
storage_t<T> from_float(float v);

template <>
inline float to_float<float>(float v) {
  return v;
}
template <>
inline float from_float<float>(float v) {
  return v;
}

template <>
inline float to_float<at::BFloat16>(uint16_t v) {
  return bits_float(static_cast<int32_t>(uint32_t{v} << 16));
}
template <>
inline uint16_t from_float<at::BFloat16>(float v) {
  const uint32_t w = static_cast<uint32_t>(float_bits(v));
  const int32_t rounded = static_cast<int32_t>((w + 0x7FFFu + ((w >> 16) & 1u)) >> 16);
  const int32_t is_nan = -static_cast<int32_t>((float_bits(v) & 0x7FFFFFFF) > 0x7F800000);
  return static_cast<uint16_t>(blend(is_nan, 0x7FC0, rounded));
}

template <>
inline float to_float<at::Half>(uint16_t h) {
  const uint32_t two_w = uint32_t{h} << 17;  // exponent and mantissa at the top, sign shifted out
  const float normal = bits_float(static_cast<int32_t>((two_w >> 4) + 0x70000000u)) * 0x1.0p-112f;
  const float subnormal = bits_float(static_cast<int32_t>((two_w >> 17) | (126u << 23))) - 0.5f;
  const int32_t is_subnormal = -static_cast<int32_t>((h & 0x7FFF) < 0x0400);
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  return bits_float(blend(is_subnormal, float_bits(subnormal), float_bits(normal)) | static_cast<int32_t>(sign));
}
template <>
inline uint16_t from_float<at::Half>(float v) {
  const int32_t magnitude = float_bits(v) & 0x7FFFFFFF;
  const int32_t exponent = magnitude >> 23;
  // Adding 2^(max(exponent, 113) - 112) rounds the mantissa at the half-precision position.
  const uint32_t rounding_bits = (static_cast<uint32_t>(std::max(exponent, 113)) + 15u) << 23;
  const float rounded = std::fabs(v) * 0x1.0p+112f * 0x1.0p-110f + bits_float(static_cast<int32_t>(rounding_bits));
  const int32_t bits = float_bits(rounded);
  const int32_t finite = ((bits >> 13) & 0x7C00) + (bits & 0x0FFF);
  const int32_t is_nan = -static_cast<int32_t>(magnitude > 0x7F800000);
  return static_cast<uint16_t>(blend(is_nan, 0x7E00, finite) | ((float_bits(v) >> 16) & 0x8000));
}

template <bool kSilu>
inline float activate(float a) {
  if constexpr (kSilu) return silu(a);
  return a;
}

struct Sums {
  double sum = 0;    // of x - pivot
  double sumsq = 0;  // of (x - pivot)^2
};

// ---- row kernels: the hot loops, one function each so they can be multiversioned ----

// Sums of x[0, n) - pivot: fp32 over kChunk-element chunks (vectorised), fp64 across chunks.
template <typename T>
VECTOR_CLONES void accumulate_span(const storage_t<T>* x, int64_t n, float pivot, Sums& s) {
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t end = std::min(n, start + kChunk);
    float sum = 0, sumsq = 0;
#pragma omp simd reduction(+ : sum, sumsq)
    for (int64_t i = start; i < end; ++i) {
      const float d = to_float<T>(x[i]) - pivot;
      sum += d;
      sumsq += d * d;
    }
    s.sum += sum;
    s.sumsq += sumsq;
  }
}

// Per-channel sums over `pixels` rows of C channels (channels-last): sum[c] += x[p, c] - pivot[c].
template <typename T>
VECTOR_CLONES void accumulate_pixels(const storage_t<T>* x, int64_t pixels, int64_t C, const float* pivot,
                                     float* sum, float* sumsq) {
  for (int64_t p = 0; p < pixels; ++p) {
    const storage_t<T>* xp = x + p * C;
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float d = to_float<T>(xp[c]) - pivot[c];
      sum[c] += d;
      sumsq[c] += d * d;
    }
  }
}

// y[i] = act((x[i] - mean) * mul + add) (+ residual[i]) over one channel's contiguous span (NCHW).
template <typename T, bool kSilu, bool kResidual>
VECTOR_CLONES void apply_span(const storage_t<T>* x, const storage_t<T>* residual, storage_t<T>* y, int64_t n,
                              float mean, float mul, float add) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    float a = activate<kSilu>((to_float<T>(x[i]) - mean) * mul + add);
    if constexpr (kResidual) a += to_float<T>(residual[i]);
    y[i] = from_float<T>(a);
  }
}

// The same over `pixels` rows of C channels with per-channel coefficients (channels-last).
template <typename T, bool kSilu, bool kResidual>
VECTOR_CLONES void apply_pixels(const storage_t<T>* x, const storage_t<T>* residual, storage_t<T>* y,
                                int64_t pixels, int64_t C, const float* mean, const float* mul, const float* add) {
  for (int64_t p = 0; p < pixels; ++p) {
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      float a = activate<kSilu>((to_float<T>(x[p * C + c]) - mean[c]) * mul[c] + add[c]);
      if constexpr (kResidual) a += to_float<T>(residual[p * C + c]);
      y[p * C + c] = from_float<T>(a);
    }
  }
}

// ---- statistics and coefficients ----

// mean and 1 / sqrt(var + eps) of n elements from their pivot-shifted sums.
inline std::pair<float, float> mean_rstd(const Sums& s, int64_t n, float pivot, double eps) {
  const double shifted_mean = s.sum / n;
  const double var = std::max(0.0, s.sumsq / n - shifted_mean * shifted_mean);
  return {static_cast<float>(pivot + shifted_mean), static_cast<float>(1.0 / std::sqrt(var + eps))};
}

// Folds rstd, the affine and the conditioning into a = (x - mean) * mul + add per (sample, channel).
// weight, bias [C] and scale, shift [B, C] (or null) are fp32 contiguous.
struct Affine {
  const float* weight;
  const float* bias;
  const float* scale;
  const float* shift;
  int64_t C;

  void fold(int64_t b, int64_t c, float rstd, float* mul, float* add) const {
    float m = rstd * weight[c];
    float a = bias[c];
    if (scale) {
      const float s = 1.0f + scale[b * C + c];
      m *= s;
      a *= s;
    }
    if (shift) a += shift[b * C + c];
    *mul = m;
    *add = a;
  }
};

// ---- layouts ----

// x, residual, y [B, C, HW] contiguous: one task per (sample, group), statistics then epilogue.
template <typename T, bool kSilu, bool kResidual>
void group_norm_act_nchw(const storage_t<T>* x, const storage_t<T>* residual, storage_t<T>* y, int64_t B, int64_t C,
                         int64_t HW, int64_t groups, double eps, const Affine& affine) {
  const int64_t group_channels = C / groups;
  at::parallel_for(0, B * groups, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / groups;
      const int64_t c0 = (task % groups) * group_channels;
      const int64_t n = group_channels * HW;
      const storage_t<T>* xg = x + (b * C + c0) * HW;
      const float pivot = to_float<T>(xg[0]);
      Sums sums;
      accumulate_span<T>(xg, n, pivot, sums);
      const auto [mean, rstd] = mean_rstd(sums, n, pivot, eps);
      for (int64_t c = c0; c < c0 + group_channels; ++c) {
        float mul, add;
        affine.fold(b, c, rstd, &mul, &add);
        const int64_t row = (b * C + c) * HW;
        apply_span<T, kSilu, kResidual>(x + row, kResidual ? residual + row : nullptr, y + row, HW, mean, mul, add);
      }
    }
  });
}

// x, residual, y [B, HW, C] contiguous (channels-last): per-channel partial sums over blocks of
// pixels, group statistics from those, then the epilogue over blocks of pixels.
template <typename T, bool kSilu, bool kResidual>
void group_norm_act_channels_last(const storage_t<T>* x, const storage_t<T>* residual, storage_t<T>* y, int64_t B,
                                  int64_t C, int64_t HW, int64_t groups, double eps, const Affine& affine) {
  const int64_t group_channels = C / groups;
  const int64_t blocks = (HW + kPixelBlock - 1) / kPixelBlock;
  // pivot [B, C]: each channel uses its group's first element x[b, pixel 0, c0].
  std::vector<float> pivot(B * C);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      pivot[b * C + c] = to_float<T>(x[b * HW * C + c / group_channels * group_channels]);

  // block_sum, block_sumsq [B, blocks, C]: fp32 within a block, stored as fp64.
  std::vector<double> block_sum(B * blocks * C), block_sumsq(B * blocks * C);
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sum(C), sumsq(C);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t p0 = (task % blocks) * kPixelBlock;
      std::fill(sum.begin(), sum.end(), 0.0f);
      std::fill(sumsq.begin(), sumsq.end(), 0.0f);
      accumulate_pixels<T>(x + (b * HW + p0) * C, std::min(kPixelBlock, HW - p0), C, pivot.data() + b * C, sum.data(),
                        sumsq.data());
      std::copy(sum.begin(), sum.end(), block_sum.begin() + task * C);
      std::copy(sumsq.begin(), sumsq.end(), block_sumsq.begin() + task * C);
    }
  });

  // group_mean (each channel's group mean), mul, add [B, C]
  std::vector<float> group_mean(B * C), mul(B * C), add(B * C);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t c0 = 0; c0 < C; c0 += group_channels) {
      Sums sums;
      for (int64_t k = 0; k < blocks; ++k) {
        for (int64_t c = c0; c < c0 + group_channels; ++c) {
          sums.sum += block_sum[(b * blocks + k) * C + c];
          sums.sumsq += block_sumsq[(b * blocks + k) * C + c];
        }
      }
      const auto [mean, rstd] = mean_rstd(sums, group_channels * HW, pivot[b * C + c0], eps);
      for (int64_t c = c0; c < c0 + group_channels; ++c) {
        group_mean[b * C + c] = mean;
        affine.fold(b, c, rstd, &mul[b * C + c], &add[b * C + c]);
      }
    }
  }

  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks;
      const int64_t offset = (b * HW + (task % blocks) * kPixelBlock) * C;
      apply_pixels<T, kSilu, kResidual>(x + offset, kResidual ? residual + offset : nullptr, y + offset,
                                        std::min(kPixelBlock, HW - (task % blocks) * kPixelBlock), C,
                                        group_mean.data() + b * C, mul.data() + b * C, add.data() + b * C);
    }
  });
}

template <typename T, bool kSilu, bool kResidual>
void launch(const at::Tensor& x, const at::Tensor& residual, at::Tensor& y, bool channels_last, int64_t groups,
            double eps, const Affine& affine) {
  const int64_t B = x.size(0), C = x.size(1), HW = x.size(2) * x.size(3);
  using S = storage_t<T>;  // at::Half / at::BFloat16 are their 16-bit words
  const S* xs = reinterpret_cast<const S*>(x.const_data_ptr<T>());
  const S* res = kResidual ? reinterpret_cast<const S*>(residual.const_data_ptr<T>()) : nullptr;
  S* ys = reinterpret_cast<S*>(y.mutable_data_ptr<T>());
  if (channels_last)
    group_norm_act_channels_last<T, kSilu, kResidual>(xs, res, ys, B, C, HW, groups, eps, affine);
  else
    group_norm_act_nchw<T, kSilu, kResidual>(xs, res, ys, B, C, HW, groups, eps, affine);
}

// (kSilu, kResidual) are template flags so the inner loops carry no branches.
template <typename T>
void launch(const at::Tensor& x, const at::Tensor& residual, at::Tensor& y, bool channels_last, int64_t groups,
            double eps, const Affine& affine, bool silu) {
  const bool has_residual = residual.defined();
  if (silu && has_residual) launch<T, true, true>(x, residual, y, channels_last, groups, eps, affine);
  else if (silu) launch<T, true, false>(x, residual, y, channels_last, groups, eps, affine);
  else if (has_residual) launch<T, false, true>(x, residual, y, channels_last, groups, eps, affine);
  else launch<T, false, false>(x, residual, y, channels_last, groups, eps, affine);
}

at::Tensor group_norm_act_cpu(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                              int64_t groups, double eps, const std::optional<at::Tensor>& scale,
                              const std::optional<at::Tensor>& shift, std::string act,
                              const std::optional<at::Tensor>& residual) {
  const Activation activation = check_group_norm_act_inputs(x_in, weight, bias, groups, eps, scale, shift, act,
                                                            residual);
  const auto [x, channels_last] = dense_input(x_in);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;

  auto as_float = [](const std::optional<at::Tensor>& t) {
    return t ? t->to(at::kFloat).contiguous() : at::Tensor();
  };
  const at::Tensor w = as_float(weight), b = as_float(bias), s = as_float(scale), sh = as_float(shift);
  const Affine affine{w.const_data_ptr<float>(), b.const_data_ptr<float>(),
                      s.defined() ? s.const_data_ptr<float>() : nullptr,
                      sh.defined() ? sh.const_data_ptr<float>() : nullptr, x.size(1)};
  const at::Tensor res =
      residual ? residual->contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous)
               : at::Tensor();

  const bool silu = activation == Activation::SiLU;
  switch (x.scalar_type()) {  // the input checks admit exactly these three
    case at::kFloat: launch<float>(x, res, y, channels_last, groups, eps, affine, silu); break;
    case at::kHalf: launch<at::Half>(x, res, y, channels_last, groups, eps, affine, silu); break;
    case at::kBFloat16: launch<at::BFloat16>(x, res, y, channels_last, groups, eps, affine, silu); break;
    default: TORCH_CHECK(false, "group_norm_act: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(clockwork, CPU, m) { m.impl("group_norm_act", &group_norm_act_cpu); }

}  // namespace clockwork
