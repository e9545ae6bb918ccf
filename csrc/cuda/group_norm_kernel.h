// Plain-CUDA fused GroupNorm -> affine -> (1 + scale) / shift -> activation -> (+ residual).
// No torch types: raw pointers and a stream, so the .cu compiles with nvcc alone; the torch
// glue (group_norm_cuda.cpp) checks inputs and picks the instantiation.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

namespace clockwork::cuda {

enum class Activation : int { Identity = 0, SiLU = 1 };

struct GroupNormActShape {
  int64_t batch;
  int64_t channels;
  int64_t pixels;      // H * W
  int64_t groups;      // divides channels
  bool channels_last;  // x, residual, y are [B, HW, C] instead of [B, C, HW]
};

// x, y, residual (nullable): B * C * HW elements of T in the layout given by shape.
// weight, bias [C], scale, shift [B, C] (nullable): fp32, contiguous.
// stats: device workspace of 2 * B * groups floats (mean and 1 / std per (sample, group)).
template <typename T>
cudaError_t group_norm_act(const T* x, const float* weight, const float* bias, const float* scale,
                           const float* shift, const T* residual, T* y, float* stats, const GroupNormActShape& shape,
                           float eps, Activation act, cudaStream_t stream);

extern template cudaError_t group_norm_act<float>(const float*, const float*, const float*, const float*,
                                                  const float*, const float*, float*, float*,
                                                  const GroupNormActShape&, float, Activation, cudaStream_t);
extern template cudaError_t group_norm_act<__half>(const __half*, const float*, const float*, const float*,
                                                   const float*, const __half*, __half*, float*,
                                                   const GroupNormActShape&, float, Activation, cudaStream_t);
extern template cudaError_t group_norm_act<__nv_bfloat16>(const __nv_bfloat16*, const float*, const float*,
                                                          const float*, const float*, const __nv_bfloat16*,
                                                          __nv_bfloat16*, float*, const GroupNormActShape&, float,
                                                          Activation, cudaStream_t);

}  // namespace clockwork::cuda
