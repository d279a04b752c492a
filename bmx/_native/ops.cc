// bmx operator library for stock MXNet 1.9 (loaded with mx.library.load).
//
// Every op here is elementwise (or elementwise plus a border), multi-threaded
// with OpenMP, and registered for the CPU. The math of each op, forward and
// backward, is documented once in bmx/quantizers.py; the sign convention comes
// from bitops.h so that training and the packed runtime can never disagree.
//
// Backward functions receive, in order: the output gradients, the forward
// inputs, the forward outputs (the lib_api convention).

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <unordered_map>
#include <vector>

#include "lib_api.h"
#include "bitops.h"

#ifndef BMX_MXNET_VERSION
#error "BMX_MXNET_VERSION must be defined by the build (the mxnet version compiled against)"
#endif

using namespace mxnet::ext;

typedef std::unordered_map<std::string, std::string> Attrs;

extern "C" {
// Read by bmx/_library.py with ctypes before the library is handed to MXNet.
const char* bmx_built_for_mxnet() { return BMX_MXNET_VERSION; }
int bmx_lib_api_version() { return MX_LIBRARY_VERSION; }
}

namespace {

// Below this many elements, starting a thread team costs more than it saves.
const int64_t kParallelGrain = 1 << 15;

typedef _Float16 half_t;

bool get_float(const Attrs& attrs, const char* key, float fallback, float* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    *out = fallback;
    return true;
  }
  char* end = nullptr;
  *out = std::strtof(it->second.c_str(), &end);
  if (end == it->second.c_str() || *end != '\0') {
    MX_ERROR_MSG << "attribute '" << key << "' must be a number, got '" << it->second << "'";
    return false;
  }
  return true;
}

bool get_int(const Attrs& attrs, const char* key, int fallback, int* out) {
  float v;
  if (!get_float(attrs, key, static_cast<float>(fallback), &v)) return false;
  if (v != std::floor(v)) {
    MX_ERROR_MSG << "attribute '" << key << "' must be an integer, got " << v;
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

struct SignParams {
  float clip_threshold = 1.0f;
  int pad_h = 0, pad_w = 0;
  float pad_value = -1.0f;
};

bool parse_sign_params(const Attrs& attrs, SignParams* p) {
  if (!get_float(attrs, "clip_threshold", 1.0f, &p->clip_threshold)) return false;
  if (!get_int(attrs, "pad_h", 0, &p->pad_h)) return false;
  if (!get_int(attrs, "pad_w", 0, &p->pad_w)) return false;
  if (!get_float(attrs, "pad_value", -1.0f, &p->pad_value)) return false;
  if (!(p->clip_threshold >= 0.0f)) {
    MX_ERROR_MSG << "clip_threshold must be >= 0, got " << p->clip_threshold;
    return false;
  }
  if (p->pad_h < 0 || p->pad_w < 0) {
    MX_ERROR_MSG << "pad_h and pad_w must be >= 0, got (" << p->pad_h << ", " << p->pad_w << ")";
    return false;
  }
  return true;
}

bool parse_bits(const Attrs& attrs, int* bits) {
  if (!get_int(attrs, "bits", -1, bits)) return false;
  if (*bits < 2 || *bits > 8) {
    MX_ERROR_MSG << "attribute 'bits' must be in 2..8, got " << *bits;
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

MXReturnValue infer_shape_sign(const Attrs& attrs, std::vector<std::vector<unsigned int>>* in,
                               std::vector<std::vector<unsigned int>>* out) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  std::vector<unsigned int> shape = in->at(0);
  if (p.pad_h || p.pad_w) {
    if (shape.size() != 4) {
      MX_ERROR_MSG << "padding needs a 4-D NCHW input, got a " << shape.size() << "-D input";
      return MX_FAIL;
    }
    shape[2] += 2 * p.pad_h;
    shape[3] += 2 * p.pad_w;
  }
  out->at(0) = shape;
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- kernels

// Applies f elementwise: out[i] = f(a[i], b[i]) for i < n, in parallel.
template <typename T, typename F>
void map2(int64_t n, const T* a, const T* b, T* out, F f) {
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i)
    out[i] = static_cast<T>(f(static_cast<float>(a[i]), static_cast<float>(b[i])));
}

template <typename T, typename F>
void map1(int64_t n, const T* a, T* out, F f) {
#pragma omp parallel for schedule(static) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<T>(f(static_cast<float>(a[i])));
}

struct Plane {
  int64_t planes, h, w;  // input planes (N*C) of h x w
  int ph, pw;            // border on each side
  int64_t oh() const { return h + 2 * ph; }
  int64_t ow() const { return w + 2 * pw; }
};

Plane plane_of(const MXTensor& x, const SignParams& p) {
  Plane pl;
  pl.ph = p.pad_h;
  pl.pw = p.pad_w;
  if (x.shape.size() == 4) {
    pl.planes = x.shape[0] * x.shape[1];
    pl.h = x.shape[2];
    pl.w = x.shape[3];
  } else {
    pl.planes = 1;
    pl.h = 1;
    pl.w = x.size();
  }
  return pl;
}

// y = sign(x) written inside a border of pad_value (the fused sign + pad).
template <typename T>
void sign_padded_forward(const Plane& pl, float pad_value, const T* x, T* y) {
  const T border = static_cast<T>(pad_value);
  const int64_t oh = pl.oh(), ow = pl.ow();
#pragma omp parallel for schedule(static) if (pl.planes * oh * ow > kParallelGrain)
  for (int64_t p = 0; p < pl.planes; ++p) {
    const T* src = x + p * pl.h * pl.w;
    T* dst = y + p * oh * ow;
    std::fill(dst, dst + pl.ph * ow, border);
    for (int64_t r = 0; r < pl.h; ++r) {
      T* row = dst + (r + pl.ph) * ow;
      const T* in = src + r * pl.w;
      std::fill(row, row + pl.pw, border);
      for (int64_t c = 0; c < pl.w; ++c)
        row[pl.pw + c] = static_cast<T>(bmx_sign_f32(static_cast<float>(in[c])));
      std::fill(row + pl.pw + pl.w, row + ow, border);
    }
    std::fill(dst + (pl.ph + pl.h) * ow, dst + oh * ow, border);
  }
}

// gx = gy (cropped to the inside of the border) * g(x).
template <typename T, typename G>
void sign_padded_backward(const Plane& pl, const T* gy, const T* x, T* gx, G g) {
  if (pl.ph == 0 && pl.pw == 0) {
    map2(pl.planes * pl.h * pl.w, gy, x, gx, [&](float d, float v) { return d * g(v); });
    return;
  }
  const int64_t oh = pl.oh(), ow = pl.ow();
#pragma omp parallel for schedule(static) if (pl.planes * oh * ow > kParallelGrain)
  for (int64_t p = 0; p < pl.planes; ++p) {
    for (int64_t r = 0; r < pl.h; ++r) {
      const T* d = gy + p * oh * ow + (r + pl.ph) * ow + pl.pw;
      const T* v = x + p * pl.h * pl.w + r * pl.w;
      T* o = gx + p * pl.h * pl.w + r * pl.w;
      for (int64_t c = 0; c < pl.w; ++c)
        o[c] = static_cast<T>(static_cast<float>(d[c]) * g(static_cast<float>(v[c])));
    }
  }
}

template <typename T>
void sign_forward(const SignParams& p, MXTensor& x, MXTensor& y) {
  Plane pl = plane_of(x, p);
  if (pl.ph == 0 && pl.pw == 0) {
    map1(x.size(), x.data<T>(), y.data<T>(), bmx_sign_f32);
  } else {
    sign_padded_forward(pl, p.pad_value, x.data<T>(), y.data<T>());
  }
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

MXReturnValue det_sign_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                               std::vector<MXTensor>* out, const OpResource& res) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  BMX_DISPATCH(in->at(0).dtype, T, sign_forward<T>(p, in->at(0), out->at(0)));
  return MX_SUCCESS;
}

MXReturnValue det_sign_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                std::vector<MXTensor>* out, const OpResource& res) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  MXTensor& x = in->at(1);
  Plane pl = plane_of(x, p);
  BMX_DISPATCH(x.dtype, T,
               sign_padded_backward(pl, in->at(0).data<T>(), x.data<T>(), out->at(0).data<T>(),
                                    ClippedSte{p.clip_threshold}));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- approx_sign

MXReturnValue approx_sign_backward(const Attrs& attrs, std::vector<MXTensor>* in,
                                   std::vector<MXTensor>* out, const OpResource& res) {
  SignParams p;
  if (!parse_sign_params(attrs, &p)) return MX_FAIL;
  MXTensor& x = in->at(1);
  Plane pl = plane_of(x, p);
  BMX_DISPATCH(x.dtype, T,
               sign_padded_backward(pl, in->at(0).data<T>(), x.data<T>(), out->at(0).data<T>(),
                                    ApproxSignGrad()));
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- weight_sign

MXReturnValue weight_sign_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                  std::vector<MXTensor>* out, const OpResource& res) {
  MXTensor& x = in->at(0);
  BMX_DISPATCH(x.dtype, T, map1(x.size(), x.data<T>(), out->at(0).data<T>(), bmx_sign_f32));
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

MXReturnValue quantize_act_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                   std::vector<MXTensor>* out, const OpResource& res) {
  int bits;
  if (!parse_bits(attrs, &bits)) return MX_FAIL;
  const float levels = static_cast<float>((1 << bits) - 1);
  MXTensor& x = in->at(0);
  BMX_DISPATCH(x.dtype, T, map1(x.size(), x.data<T>(), out->at(0).data<T>(), [=](float v) {
                 float c = std::min(std::max(v, 0.0f), 1.0f);
                 return std::round(c * levels) / levels;
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
#pragma omp parallel for schedule(static) reduction(max : m) if (n > kParallelGrain)
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(std::tanh(static_cast<float>(w[i]))));
  return std::max(m, 1e-12f);
}

MXReturnValue quantize_weight_forward(const Attrs& attrs, std::vector<MXTensor>* in,
                                      std::vector<MXTensor>* out, const OpResource& res) {
  int bits;
  if (!parse_bits(attrs, &bits)) return MX_FAIL;
  const float levels = static_cast<float>((1 << bits) - 1);
  MXTensor& w = in->at(0);
  BMX_DISPATCH(w.dtype, T, {
    const float two_m = 2.0f * max_abs_tanh(w.size(), w.data<T>());
    map1(w.size(), w.data<T>(), out->at(0).data<T>(), [=](float v) {
      float u = std::tanh(v) / two_m + 0.5f;
      return 2.0f * (std::round(u * levels) / levels) - 1.0f;
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

REGISTER_OP(bmx_det_sign)
    .setParseAttrs(parse_sign)
    .setInferType(infer_type)
    .setInferShape(infer_shape_sign)
    .setForward(det_sign_forward, "cpu")
    .setBackward(det_sign_backward, "cpu");

REGISTER_OP(bmx_approx_sign)
    .setParseAttrs(parse_sign)
    .setInferType(infer_type)
    .setInferShape(infer_shape_sign)
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
