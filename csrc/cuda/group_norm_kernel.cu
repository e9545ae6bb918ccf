// Two kernels: statistics (one block per (sample, group), fp32 Welford per thread, merged with
// warp shuffles then shared memory) and an elementwise epilogue over all elements. The
// epilogue recomputes (sample, channel) from the flat index, so one kernel serves NCHW and
// channels-last.
#include "group_norm_kernel.h"

#include <algorithm>

namespace clockwork::cuda {
namespace {

constexpr int kStatsThreads = 512;
constexpr int kApplyThreads = 256;
constexpr int64_t kMaxApplyBlocks = 65535;  // grid-stride beyond this

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Trivially constructible (it lives in __shared__ memory): start from Welford{} = all zeros.
struct Welford {
  float mean;
  float m2;
  float count;

  __device__ void add(float v) {
    count += 1.f;
    const float delta = v - mean;
    mean += delta / count;
    m2 += delta * (v - mean);
  }

  // Chan et al. parallel merge; either side may be empty.
  __device__ void merge(const Welford& o) {
    const float n = count + o.count;
    if (n == 0.f) return;
    const float delta = o.mean - mean;
    const float w = o.count / n;
    mean += delta * w;
    m2 += o.m2 + delta * delta * count * w;
    count = n;
  }
};

__device__ Welford warp_merge(Welford w) {
  for (int offset = 16; offset > 0; offset /= 2) {
    w.merge({__shfl_xor_sync(0xffffffffu, w.mean, offset), __shfl_xor_sync(0xffffffffu, w.m2, offset),
             __shfl_xor_sync(0xffffffffu, w.count, offset)});
  }
  return w;
}

// grid: B * groups blocks. stats[2 * block] = mean, stats[2 * block + 1] = rstd.
template <typename T>
__global__ void __launch_bounds__(kStatsThreads)
    group_stats_kernel(const T* __restrict__ x, float* __restrict__ stats, GroupNormActShape s, float eps) {
  const int64_t b = blockIdx.x / s.groups;
  const int64_t group_channels = s.channels / s.groups;
  const int64_t c0 = (blockIdx.x % s.groups) * group_channels;
  const int64_t n = group_channels * s.pixels;
  Welford w{};
  for (int64_t e = threadIdx.x; e < n; e += blockDim.x) {
    // NCHW: the group is one contiguous span. Channels-last: pixel-major, group_channels per pixel.
    const int64_t offset = s.channels_last ? (b * s.pixels + e / group_channels) * s.channels + c0 + e % group_channels
                                           : (b * s.channels + c0) * s.pixels + e;
    w.add(to_float(x[offset]));
  }
  w = warp_merge(w);

  __shared__ Welford per_warp[kStatsThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) per_warp[warp] = w;
  __syncthreads();
  if (warp == 0) {
    w = lane < blockDim.x / 32 ? per_warp[lane] : Welford{};
    w = warp_merge(w);
    if (lane == 0) {
      stats[2 * blockIdx.x] = w.mean;
      stats[2 * blockIdx.x + 1] = rsqrtf(w.m2 / w.count + eps);
    }
  }
}

template <typename T, Activation kAct>
__global__ void __launch_bounds__(kApplyThreads)
    apply_kernel(const T* __restrict__ x, const float* __restrict__ weight, const float* __restrict__ bias,
                 const float* __restrict__ scale, const float* __restrict__ shift, const T* __restrict__ residual,
                 T* __restrict__ y, const float* __restrict__ stats, GroupNormActShape s) {
  const int64_t total = s.batch * s.channels * s.pixels;
  const int64_t group_channels = s.channels / s.groups;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = s.channels_last ? i % s.channels : i / s.pixels % s.channels;
    const int64_t b = i / (s.channels * s.pixels);
    const int64_t sample_group = b * s.groups + c / group_channels;
    float a = (to_float(x[i]) - stats[2 * sample_group]) * stats[2 * sample_group + 1] * weight[c] + bias[c];
    if (scale) a *= 1.f + scale[b * s.channels + c];
    if (shift) a += shift[b * s.channels + c];
    if constexpr (kAct == Activation::SiLU) a = a / (1.f + __expf(-a));
    if (residual) a += to_float(residual[i]);
    y[i] = from_float<T>(a);
  }
}

}  // namespace

template <typename T>
cudaError_t group_norm_act(const T* x, const float* weight, const float* bias, const float* scale,
                           const float* shift, const T* residual, T* y, float* stats, const GroupNormActShape& shape,
                           float eps, Activation act, cudaStream_t stream) {
  const int64_t total = shape.batch * shape.channels * shape.pixels;
  if (total == 0) return cudaSuccess;
  group_stats_kernel<T><<<shape.batch * shape.groups, kStatsThreads, 0, stream>>>(x, stats, shape, eps);
  const int64_t blocks = std::min((total + kApplyThreads - 1) / kApplyThreads, kMaxApplyBlocks);
  if (act == Activation::SiLU)
    apply_kernel<T, Activation::SiLU>
        <<<blocks, kApplyThreads, 0, stream>>>(x, weight, bias, scale, shift, residual, y, stats, shape);
  else
    apply_kernel<T, Activation::Identity>
        <<<blocks, kApplyThreads, 0, stream>>>(x, weight, bias, scale, shift, residual, y, stats, shape);
  return cudaGetLastError();
}

template cudaError_t group_norm_act<float>(const float*, const float*, const float*, const float*, const float*,
                                           const float*, float*, float*, const GroupNormActShape&, float,
                                           Activation, cudaStream_t);
template cudaError_t group_norm_act<__half>(const __half*, const float*, const float*, const float*, const float*,
                                            const __half*, __half*, float*, const GroupNormActShape&, float,
                                            Activation, cudaStream_t);
template cudaError_t group_norm_act<__nv_bfloat16>(const __nv_bfloat16*, const float*, const float*, const float*,
                                                   const float*, const __nv_bfloat16*, __nv_bfloat16*, float*,
                                                   const GroupNormActShape&, float, Activation, cudaStream_t);

}  // namespace clockwork::cuda
