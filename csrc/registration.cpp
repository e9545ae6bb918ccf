// The clockwork op library: every schema in one place. Device kernels register their
// implementations next to the code (cpu/*.cpp, cuda/*_cuda.cpp).
#include <torch/extension.h>

TORCH_LIBRARY(clockwork, m) {
  // x [B, C, H, W] -> act((GN(x) * weight + bias) * (1 + scale) + shift) (+ residual), in x's dtype and layout.
  m.def(
      "group_norm_act(Tensor x, Tensor weight, Tensor bias, int groups, float eps, Tensor? scale, Tensor? shift, "
      "str act, Tensor? residual) -> Tensor");
}

// `import clockwork_engine._C` loads this library, which runs the registrations above; the
// module itself only says which devices were compiled in.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
#ifdef CLOCKWORK_CUDA
  m.attr("built_with_cuda") = true;
#else
  m.attr("built_with_cuda") = false;
#endif
}
