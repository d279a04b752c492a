// bmx operator library for stock MXNet 1.9 (loaded with mx.library.load).
//
// The training ops are elementwise, multi-threaded with OpenMP, and registered
// for the CPU; the math of each, forward and backward, is documented once in
// bmx/quantizers.py. bmx_xnor_conv2d, the packed binary convolution of
// inference, is in xnor_conv_op.cc. The sign convention and every bit kernel
// come from bitops.h so that training, the packed runtime and these ops can
// never disagree.
//
// Backward functions receive, in order: the output gradients, the forward
// inputs, the forward outputs (the lib_api convention).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "bitops.h"
#include "op_common.h"

#ifndef BMX_MXNET_VERSION
#error "BMX_MXNET_VERSION must be defined by the build (the mxnet version compiled against)"
#endif

using namespace mxnet::ext;

using bmx_ops::Attrs;
using bmx_ops::get_float;
using bmx_ops::get_int;
using bmx_ops::kParallelGrain;
using bmx_ops::op_threads;

extern "C" {
// Read by bmx/_library.py with ctypes before the library is handed to MXNet.
const char* bmx_built_for_mxnet() { return BMX_MXNET_VERSION; }
int bmx_lib_api_version() { return MX_LIBRARY_VERSION; }
}

namespace {

typedef _Float16 half_t;

// The quantizer settings' defaults and rules, as bmx/quantizer_math.py states them for Python
// (tests/test_quantizer_math.py checks that both sides accept and reject the same values).
const float kClipThreshold = 1.0f;
const int kMinBits = 2, kMaxBits = 8;

struct SignParams {
  float clip_threshold = kClipThreshold;
  // Emit b = (sign(x) + 1) / 2 in {0, 1} instead of sign(x) (gradient halved to match), so
  // that a following convolution can pad with zeros natively: see QConv2D's input_zero_one.
  bool zero_one = false;
};

bool parse_sign_params(const Attrs& attrs, SignParams* p) {
  int zero_one;
  if (!get_float(attrs, "clip_threshold", kClipThreshold, &p->clip_threshold)) return false;
  if (!get_int(attrs, "zero_one", 0, &zero_one)) return false;
  if (!(std::isfinite(p->clip_threshold) && p->clip_threshold >= 0.0f)) {
    MX_ERROR_MSG << "clip_threshold must be >= 0 and finite, got " << p->clip_threshold;
    return false;
  }
  if (zero_one != 0 && zero_one != 1) {
    MX_ERROR_MSG << "zero_one must be 0 or 1, got " << zero_one;
    return false;
  }
  p->zero_one = zero_one == 1;
  return true;
}

bool parse_bits(const Attrs& attrs, int* bits) {
  if (!get_int(attrs, "bits", -1, bits)) return false;
  if (*bits < kMinBits || *bits > kMaxBits) {
    MX_ERROR_MSG << "attribute 'bits' must be in " << kMinBits << ".." << kMaxBits << ", got " << *bits;
    return false;
  }
  return true;
}

// ---------------------------------------------------------------- attributes

MXReturnValue parse_one_in_one_out(const Attrs& attrs, int* num_in, int* num_out) {
  *num_in = 1;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue parse_sign(const Attrs& attrs, int* num_in, int* num_out) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  return parse_one_in_one_out(attrs, num_in, num_out);
}

MXReturnValue parse_quantize(const Attrs& attrs, int* num_in, int* num_out) {
  int bits;
  if (!parse_bits(attrs, &bits)) return MX_FAIL;
  return parse_one_in_one_out(attrs, num_in, num_out);
}

MXReturnValue infer_type(const Attrs& attrs, std::vector<int>* in_types,
                         std::vector<int>* out_types) {
  int t = in_types->at(0);
  if (t != kFloat32 && t != kFloat16) {
    MX_ERROR_MSG << "input must be float32 or float16, got dtype code " << t;
    return MX_FAIL;
  }
  out_types->at(0) = t;
  return MX_SUCCESS;
}

MXReturnValue infer_shape_same(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                               std::vector<std::vector<unsigned int>>* out) {
  out->at(0) = in->at(0);
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- kernels

// roundf() for 0 <= v <= 255 (halves away from zero), in a form the compiler vectorizes with
// plain SSE2: in double, v + 0.5 is exact, so truncation gives floor(v + 0.5) exactly.
// NaN is passed through (converting it to int would be undefined).
inline float round_half_up(float v) {
  const bool is_nan = v != v;
  float r = static_cast<float>(static_cast<int32_t>((is_nan ? 0.0 : static_cast<double>(v)) + 0.5));
  return is_nan ? v : r;
}

// Applies f elementwise: out[i] = f(a[i], b[i]) for i < n, in parallel.
template <typename T, typename F>
void map2(int64_t n, const T* a, const T* b, T* out, F f) {
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(f(static_cast<float>(a[i]), static_cast<float>(b[i])));
}

template <typename T, typename F>
void map1(int64_t n, const T* a, T* out, F f) {
#pragma omp parallel for schedule(static) num_threads(op_threads()) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(f(static_cast<float>(a[i])));
}

template <typename T>
void sign_forward(const SignParams& p, MXTensor& x, MXTensor& y) {
  if (p.zero_one) {
    map1(x.size(), x.data<T>(), y.data<T>(),
         [](float v) { return static_cast<float>(bmx_sign_bit_f32(v)); });
  } else {
    map1(x.size(), x.data<T>(), y.data<T>(), [](float v) { return bmx_sign_f32(v); });
  }
}

// gx = gy * g(x), halved for the {0, 1} encoding whose forward is half as steep.
template <typename T, typename G>
void sign_backward(const SignParams& p, MXTensor& gy, MXTensor& x, MXTensor& gx, G g) {
  const float scale = p.zero_one ? 0.5f : 1.0f;
  map2(x.size(), gy.data<T>(), x.data<T>(), gx.data<T>(),
       [&](float d, float v) { return d * (g(v) * scale); });
}

// The gradient masks of the two sign estimators.
struct ClippedSte {
  float t;
  float operator()(float v) const { return std::fabs(v) <= t ? 1.0f : 0.0f; }
};
struct ApproxSignGrad {
  float operator()(float v) const {
    float a = std::fabs(v);
    return a <= 1.0f ? 2.0f - 2.0f * a : 0.0f;
  }
};

#define BMX_DISPATCH(dtype, T, ...)                        \
  do {                                                     \
    if ((dtype) == kFloat32) {                             \
      typedef float T;                                     \
      __VA_ARGS__;                                         \
    } else if ((dtype) == kFloat16) {                      \
      typedef half_t T;                                    \
      __VA_ARGS__;                                         \
    } else {                                               \
      MX_ERROR_MSG << "unsupported dtype code " << (dtype); \
      return MX_FAIL;                                      \
    }                                                      \
  } while (0)

// ---------------------------------------------------------------- det_sign

// Both sign ops' backward: the stored gradient mask make_grad(params) applied to x = in[1].
template <typename MakeGrad>
MXReturnValue sign_backward_op(const Attrs& attrs, std::vector<MXTensor>* in, std::vector<MXTensor>* out,
                               MakeGrad make_grad) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  BMX_DISPATCH(in->at(1).dtype, T, sign_backward<T>(p, in->at(0), in->at(1), out->at(0), make_grad(p)));
  return MX_SUCCESS;
}

MXReturnValue det_sign_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                               std::vector<MXTensor>* out, const OpResource& res) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  BMX_DISPATCH(in->at(0).dtype, T, sign_forward<T>(p, in->at(0), out->at(0)));
  return MX_SUCCESS;
}

MXReturnValue det_sign_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                std::vector<MXTensor>* out, const OpResource& res) {
  return sign_backward_op(attrs, in, out, [](const SignParams& p) { return ClippedSte{p.clip_threshold}; });
}

// ---------------------------------------------------------------- approx_sign

MXReturnValue approx_sign_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                   std::vector<MXTensor>* out, const OpResource& res) {
  return sign_backward_op(attrs, in, out, [](const SignParams&) { return ApproxSignGrad(); });
}

// ---------------------------------------------------------------- weight_sign

MXReturnValue weight_sign_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                  std::vector<MXTensor>* out, const OpResource& res) {
  MXTensor& x = in->at(0);
  BMX_DISPATCH(x.dtype, T, map1(x.size(), x.data<T>(), out->at(0).data<T>(),
                                [](float v) { return bmx_sign_f32(v); }));
  return MX_SUCCESS;
}

MXReturnValue identity_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                std::vector<MXTensor>* out, const OpResource& res) {
  MXTensor& gy = in->at(0);
  BMX_DISPATCH(gy.dtype, T,
               map1(gy.size(), gy.data<T>(), out->at(0).data<T>(), [](float d) { return d; }));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- k-bit activations

// The 2^bits - 1 steps of a k-bit quantizer with the op's `bits` attribute.
bool parse_levels(const Attrs& attrs, float* levels) {
  int bits;
  if (!parse_bits(attrs, &bits)) return false;
  *levels = static_cast<float>((1 << bits) - 1);
  return true;
}

MXReturnValue quantize_act_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                   std::vector<MXTensor>* out, const OpResource& res) {
  float levels;
  if (!parse_levels(attrs, &levels)) return MX_FAIL;
  MXTensor& x = in->at(0);
  BMX_DISPATCH(x.dtype, T, map1(x.size(), x.data<T>(), out->at(0).data<T>(), [=](float v) {
                 float c = std::min(std::max(v, 0.0f), 1.0f);
                 return round_half_up(c * levels) / levels;
               }));
  return MX_SUCCESS;
}

MXReturnValue quantize_act_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                    std::vector<MXTensor>* out, const OpResource& res) {
  MXTensor& x = in->at(1);
  BMX_DISPATCH(x.dtype, T,
               map2(x.size(), in->at(0).data<T>(), x.data<T>(), out->at(0).data<T>(),
                    [](float d, float v) { return (v >= 0.0f && v <= 1.0f) ? d : 0.0f; }));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- DoReFa weights

// max |tanh(w)|, floored so that an all-zero tensor does not divide by zero.
template <typename T>
float max_abs_tanh(int64_t n, const T* w) {
  float m = 0.0f;
#pragma omp parallel for schedule(static) num_threads(op_threads()) reduction(max : m) \
    if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(std::tanh(static_cast<float>(w[i]))));
  return std::max(m, 1e-12f);
}

MXReturnValue quantize_weight_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                      std::vector<MXTensor>* out, const OpResource& res) {
  float levels;
  if (!parse_levels(attrs, &levels)) return MX_FAIL;
  MXTensor& w = in->at(0);
  BMX_DISPATCH(w.dtype, T, {
    const float two_m = 2.0f * max_abs_tanh(w.size(), w.data<T>());
    map1(w.size(), w.data<T>(), out->at(0).data<T>(), [=](float v) {
      float u = std::tanh(v) / two_m + 0.5f;
      return 2.0f * (round_half_up(u * levels) / levels) - 1.0f;
    });
  });
  return MX_SUCCESS;
}

MXReturnValue quantize_weight_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                       std::vector<MXTensor>* out, const OpResource& res) {
  MXTensor& w = in->at(1);
  BMX_DISPATCH(w.dtype, T, {
    const float m = max_abs_tanh(w.size(), w.data<T>());
    map2(w.size(), in->at(0).data<T>(), w.data<T>(), out->at(0).data<T>(), [=](float d, float v) {
      float t = std::tanh(v);
      return d * (1.0f - t * t) / m;
    });
  });
  return MX_SUCCESS;
}

}  // namespace

// The thread count the ops use, for the tests (ctypes).
extern "C" int bmx_op_threads() { return op_threads(); }

REGISTER_OP(bmx_det_sign)
    .setParseAttrs(parse_sign)
    .setInferType(infer_type)
    .setInferShape(infer_shape_same)
    .setForward(det_sign_forward, "cpu")
    .setBackward(det_sign_backward, "cpu");

REGISTER_OP(bmx_approx_sign)
    .setParseAttrs(parse_sign)
    .setInferType(infer_type)
    .setInferShape(infer_shape_same)
    .setForward(det_sign_forward, "cpu")
    .setBackward(approx_sign_backward, "cpu");

REGISTER_OP(bmx_weight_sign)
    .setParseAttrs(parse_one_in_one_out)
    .setInferType(infer_type)
    .setInferShape(infer_shape_same)
    .setForward(weight_sign_forward, "cpu")
    .setBackward(identity_backward, "cpu");

REGISTER_OP(bmx_quantize_act)
    .setParseAttrs(parse_quantize)
    .setInferType(infer_type)
    .setInferShape(infer_shape_same)
    .setForward(quantize_act_forward, "cpu")
    .setBackward(quantize_act_backward, "cpu");

REGISTER_OP(bmx_quantize_weight)
    .setParseAttrs(parse_quantize)
    .setInferType(infer_type)
    .setInferShape(infer_shape_same)
    .setForward(quantize_weight_forward, "cpu")
    .setBackward(quantize_weight_backward, "cpu");

MXReturnValue initialize(int version) {
  // lib_api's ABI is that of MXNet 1.7+; the exact-version check lives in bmx/_library.py.
  if (version < 10700) {
    MX_ERROR_MSG << "bmx needs MXNet >= 1.7, this is " << version;
    return MX_FAIL;
  }
  return MX_SUCCESS;
}
