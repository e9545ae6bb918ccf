// Torch glue for the CUDA kernel of clockwork::group_norm_act (built only with CUDA torch + nvcc).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/group_norm_kernel.h"
#include "group_norm_inputs.h"

namespace clockwork {
namespace {

template <typename T, typename Torch>
void launch(const at::Tensor& x, const at::Tensor& residual, at::Tensor& y, const at::Tensor& weight,
            const at::Tensor& bias, const at::Tensor& scale, const at::Tensor& shift, at::Tensor& stats,
            const cuda::GroupNormActShape& shape, double eps, cuda::Activation act) {
  // at::Half / at::BFloat16 share the bit layout of __half / __nv_bfloat16.
  auto in = [](const at::Tensor& t) {
    return t.defined() ? reinterpret_cast<const T*>(t.const_data_ptr<Torch>()) : nullptr;
  };
  auto f32 = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<float>() : nullptr; };
  C10_CUDA_CHECK(cuda::group_norm_act<T>(in(x), f32(weight), f32(bias), f32(scale), f32(shift), in(residual),
                                         reinterpret_cast<T*>(y.mutable_data_ptr<Torch>()),
                                         stats.mutable_data_ptr<float>(), shape, static_cast<float>(eps), act,
                                         c10::cuda::getCurrentCUDAStream()));
}

at::Tensor group_norm_act_cuda(const at::Tensor& x_in, const at::Tensor& weight, const at::Tensor& bias,
                               int64_t groups, double eps, const std::optional<at::Tensor>& scale,
                               const std::optional<at::Tensor>& shift, std::string act,
                               const std::optional<at::Tensor>& residual) {
  const Activation activation = check_group_norm_act_inputs(x_in, weight, bias, groups, eps, scale, shift, act,
                                                            residual);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto [x, channels_last] = dense_input(x_in);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;

  const cuda::GroupNormActShape shape{x.size(0), x.size(1), x.size(2) * x.size(3), groups, channels_last};
  auto as_float = [](const std::optional<at::Tensor>& t) {
    return t ? t->to(at::kFloat).contiguous() : at::Tensor();
  };
  const at::Tensor w = as_float(weight), b = as_float(bias), s = as_float(scale), sh = as_float(shift);
  const at::Tensor res =
      residual ? residual->contiguous(channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous)
               : at::Tensor();
  at::Tensor stats = at::empty({2 * shape.batch * groups}, x.options().dtype(at::kFloat));
  const auto cuda_act = activation == Activation::SiLU ? cuda::Activation::SiLU : cuda::Activation::Identity;

  switch (x.scalar_type()) {  // the input checks admit exactly these three
    case at::kFloat: launch<float, float>(x, res, y, w, b, s, sh, stats, shape, eps, cuda_act); break;
    case at::kHalf: launch<__half, at::Half>(x, res, y, w, b, s, sh, stats, shape, eps, cuda_act); break;
    case at::kBFloat16:
      launch<__nv_bfloat16, at::BFloat16>(x, res, y, w, b, s, sh, stats, shape, eps, cuda_act);
      break;
    default: TORCH_CHECK(false, "group_norm_act: unsupported dtype ", x.scalar_type());
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_IMPL(clockwork, CUDA, m) { m.impl("group_norm_act", &group_norm_act_cuda); }

}  // namespace clockwork
