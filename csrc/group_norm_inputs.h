// Input validation and layout choice shared by the CPU and CUDA implementations of
// clockwork::group_norm_act, so both devices accept the same inputs and return the same strides.
#pragma once

#include <optional>
#include <string>
#include <utility>

#include <ATen/ATen.h>

namespace clockwork {

enum class Activation { Identity, SiLU };

inline Activation parse_activation(const std::string& act) {
  if (act == "identity") return Activation::Identity;
  if (act == "silu") return Activation::SiLU;
  TORCH_CHECK(false, "group_norm_act: act must be 'identity' or 'silu', got '", act, "'");
}

inline void check_same_device(const at::Tensor& x, const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device() == x.device(), "group_norm_act: ", name, " is on ", t.device(), " but x is on ",
              x.device());
}

inline void check_per_sample_channel(const at::Tensor& x, const std::optional<at::Tensor>& t, const char* name) {
  if (!t.has_value()) return;
  check_same_device(x, *t, name);
  TORCH_CHECK(t->dim() == 2 && t->size(0) == x.size(0) && t->size(1) == x.size(1), "group_norm_act: ", name,
              " must be [B, C] = [", x.size(0), ", ", x.size(1), "], got ", t->sizes());
  TORCH_CHECK(t->is_floating_point(), "group_norm_act: ", name, " must be floating point, got ", t->scalar_type());
}

// x [B, C, H, W]; weight, bias [C]; scale, shift [B, C]; residual like x (same dtype).
inline Activation check_group_norm_act_inputs(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                              int64_t groups, double eps, const std::optional<at::Tensor>& scale,
                                              const std::optional<at::Tensor>& shift, const std::string& act,
                                              const std::optional<at::Tensor>& residual) {
  TORCH_CHECK(x.dim() == 4, "group_norm_act: x must be 4-D [B, C, H, W], got ", x.dim(), "-D ", x.sizes());
  auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "group_norm_act: x must be float32, float16 or bfloat16, got ", dtype);
  const int64_t C = x.size(1);
  TORCH_CHECK(groups > 0 && C % groups == 0, "group_norm_act: groups=", groups,
              " must be positive and divide the channel count C=", C);
  TORCH_CHECK(eps >= 0, "group_norm_act: eps must be >= 0, got ", eps);
  for (auto [t, name] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    check_same_device(x, *t, name);
    TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "group_norm_act: ", name, " must be [C] = [", C, "], got ",
                t->sizes());
    TORCH_CHECK(t->is_floating_point(), "group_norm_act: ", name, " must be floating point, got ", t->scalar_type());
  }
  check_per_sample_channel(x, scale, "scale");
  check_per_sample_channel(x, shift, "shift");
  if (residual.has_value()) {
    check_same_device(x, *residual, "residual");
    TORCH_CHECK(residual->sizes() == x.sizes(), "group_norm_act: residual must have x's shape ", x.sizes(),
                ", got ", residual->sizes());
    TORCH_CHECK(residual->scalar_type() == dtype, "group_norm_act: residual dtype ", residual->scalar_type(),
                " must match x's dtype ", dtype);
  }
  return parse_activation(act);
}

// x as the kernels read it, and whether that is channels-last: NCHW- or channels-last-contiguous x
// is used as it is (the output, empty_like(x), then has x's strides); anything else is copied to NCHW.
inline std::pair<at::Tensor, bool> dense_input(const at::Tensor& x) {
  if (x.is_contiguous()) return {x, false};
  if (x.is_contiguous(at::MemoryFormat::ChannelsLast)) return {x, true};
  return {x.contiguous(), false};
}

}  // namespace clockwork
