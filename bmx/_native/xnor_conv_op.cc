// bmx_xnor_conv2d: the packed binary convolution of inference, an operator of bmx's MXNet operator
// library (with the training ops of ops.cc). The bit kernels are bitops.h's, shared with bmx._xnor.

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bitops.h"
#include "op_common.h"

using namespace mxnet::ext;
using bmx_ops::Attrs;
using bmx_ops::get_float;
using bmx_ops::get_int;
using bmx_ops::op_threads;

namespace {

// ---------------------------------------------------------------- xnor_conv2d
//
// bmx_xnor_conv2d(data, weight): the binary convolution of a packed model, forward only.
//
//   out[n, o, i, j] = sum over c < Cg, kh < KH, kw < KW of
//                       xs[n, g Cg + c, i sh + kh dh - ph, j sw + kw dw - pw]
//                       * sign(W)[o, c, kh, kw]
//
// where xs is sign(data) (+1 for x >= 0, -1 otherwise, NaN included) reading pad_value outside
// the image, G = num_group, Cg = C / G and g = o / (O / G) is the group of output channel o.
// Every term is +/-1 (or 0 in zero padding), so out is an integer: it is computed exactly, as
// bits - 2 * popcount(xor) over packed words by bitops.h's kernels, and the shape check keeps
// |out| <= 2^24 so that float32 holds it exactly.
//
// Inputs:  data   float32 (N, C, H, W).
//          weight int64 (O, KH, KW, Wd), Wd = ceil(Cg / 64): bit j of word w of tap (kh, kw) of
//                 output channel o is 1 iff W[o, 64 w + j, kh, kw] >= 0, bits past Cg are 0;
//                 i.e. bmx.xnor.pack_weights(W, G).words viewed as int64.
// Attributes: kernel "(KH, KW)" (required), stride "(sh, sw)" [(1, 1)], pad "(ph, pw)" [(0, 0)],
//          dilate "(dh, dw)" [(1, 1)], num_filter O (required), num_group G [1],
//          pad_value -1 or 0 [-1]. Any other attribute (bar MXNet's own "__...__") is an error.
// Output:  float32 (N, O, OH, OW), OH = (H + 2 ph - dh (KH - 1) - 1) / sh + 1 (floor) and OW
//          likewise, as for MXNet's Convolution.
// No gradient: a packed model is for inference only.

const char kXnorConv[] = "bmx_xnor_conv2d";

struct XnorConvParams {
  int64_t kernel[2] = {0, 0}, stride[2] = {1, 1}, pad[2] = {0, 0}, dilate[2] = {1, 1};
  int64_t num_filter = 0, num_group = 1;
  bool pad_zero = false;  // pad_value 0 (else -1)
};

std::string shape_str(const std::vector<int64_t>& shape) {
  std::ostringstream s;
  s << "(";
  for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
  s << (shape.size() == 1 ? ",)" : ")");
  return s.str();
}

const char* dtype_name(int dtype) {
  switch (dtype) {
    case kFloat32: return "float32";
    case kFloat64: return "float64";
    case kFloat16: return "float16";
    case kUint8: return "uint8";
    case kInt32: return "int32";
    case kInt8: return "int8";
    case kInt64: return "int64";
    default: return "an unknown dtype";
  }
}

// Parses one integer at *s (after spaces) into [minimum, INT32_MAX]; advances *s past it.
bool parse_bounded_int(const char** s, int64_t minimum, int64_t* out) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(*s, &end, 10);
  if (end == *s || errno == ERANGE || v < minimum || v > INT32_MAX) return false;
  *out = v;
  *s = end;
  return true;
}

void skip_spaces(const char** s) {
  while (**s == ' ') ++*s;
}

// An attribute of two integers >= minimum, written "(a, b)" (as Python's str of a tuple) or
// "[a, b]"; absent, *pair keeps its default.
bool get_pair(const Attrs& attrs, const char* key, int64_t minimum, int64_t* pair) {
  auto it = attrs.find(key);
  if (it == attrs.end()) return true;
  const char* s = it->second.c_str();
  skip_spaces(&s);
  const char close = *s == '(' ? ')' : *s == '[' ? ']' : '\0';
  bool ok = close != '\0';
  if (ok) ++s;
  for (int i = 0; ok && i < 2; ++i) {
    skip_spaces(&s);
    ok = parse_bounded_int(&s, minimum, &pair[i]);
    skip_spaces(&s);
    if (ok) ok = *s++ == (i == 0 ? ',' : close);
  }
  skip_spaces(&s);
  if (!ok || *s != '\0') {
    MX_ERROR_MSG << kXnorConv << ": attribute '" << key << "' must be a pair of integers >= "
                 << minimum << " such as (" << std::max<int64_t>(minimum, 1) << ", "
                 << std::max<int64_t>(minimum, 1) << "), got '" << it->second << "'";
    return false;
  }
  return true;
}

// An integer attribute >= 1; absent, *out keeps its default unless the attribute is required.
bool get_count(const Attrs& attrs, const char* key, bool required, int64_t* out) {
  auto it = attrs.find(key);
  if (it == attrs.end()) {
    if (required) MX_ERROR_MSG << kXnorConv << ": attribute '" << key << "' is required";
    return !required;
  }
  const char* s = it->second.c_str();
  skip_spaces(&s);
  bool ok = parse_bounded_int(&s, 1, out);
  skip_spaces(&s);
  if (!ok || *s != '\0') {
    MX_ERROR_MSG << kXnorConv << ": attribute '" << key << "' must be an integer >= 1, got '"
                 << it->second << "'";
    return false;
  }
  return true;
}

bool parse_xnor_conv_params(const Attrs& attrs, XnorConvParams* p) {
  static const char* const known[] = {"kernel", "stride", "pad", "dilate",
                                      "num_filter", "num_group", "pad_value"};
  for (const auto& kv : attrs) {
    // "__...__" keys are MXNet's own node attributes (profiler scope, dtype hints...)
    if (kv.first.compare(0, 2, "__") == 0) continue;
    if (std::find_if(std::begin(known), std::end(known),
                     [&](const char* k) { return kv.first == k; }) == std::end(known)) {
      MX_ERROR_MSG << kXnorConv << ": unknown attribute '" << kv.first
                   << "' (expected kernel, stride, pad, dilate, num_filter, num_group, pad_value)";
      return false;
    }
  }
  if (attrs.find("kernel") == attrs.end()) {
    MX_ERROR_MSG << kXnorConv << ": attribute 'kernel' is required";
    return false;
  }
  float pad_value;
  if (!get_pair(attrs, "kernel", 1, p->kernel) || !get_pair(attrs, "stride", 1, p->stride) ||
      !get_pair(attrs, "pad", 0, p->pad) || !get_pair(attrs, "dilate", 1, p->dilate) ||
      !get_count(attrs, "num_filter", true, &p->num_filter) ||
      !get_count(attrs, "num_group", false, &p->num_group) ||
      !get_float(attrs, "pad_value", -1.0f, &pad_value))
    return false;
  if (pad_value != -1.0f && pad_value != 0.0f) {
    MX_ERROR_MSG << kXnorConv << ": pad_value must be -1 or 0, got " << pad_value;
    return false;
  }
  p->pad_zero = pad_value == 0.0f;
  if (p->num_filter % p->num_group != 0) {
    MX_ERROR_MSG << kXnorConv << ": num_filter = " << p->num_filter
                 << " output channels do not split into num_group = " << p->num_group
                 << " groups";
    return false;
  }
  return true;
}

// What the kernels need to know of a call, derived from the input shapes.
struct XnorConvGeometry {
  int64_t batch, channels, in_h, in_w;
  int64_t group_bits, group_words;  // Cg and Wd
  int64_t out_h, out_w;
};

// Checks data's shape, and the weight's if known (non-null), against the attributes and
// derives the geometry; every error names the attribute or the axis at fault.
bool xnor_conv_geometry(const XnorConvParams& p, const std::vector<int64_t>& data,
                        const std::vector<int64_t>* weight, XnorConvGeometry* g) {
  if (data.size() != 4 || data[1] < 1) {
    MX_ERROR_MSG << kXnorConv << ": data must be 4-D (N, C, H, W) with C >= 1, got shape "
                 << shape_str(data);
    return false;
  }
  g->batch = data[0];
  g->channels = data[1];
  g->in_h = data[2];
  g->in_w = data[3];
  if (g->channels % p.num_group != 0) {
    MX_ERROR_MSG << kXnorConv << ": data's C = " << g->channels
                 << " channels do not split into num_group = " << p.num_group << " groups";
    return false;
  }
  g->group_bits = g->channels / p.num_group;
  g->group_words = static_cast<int64_t>(bmx_words_for_bits(g->group_bits));
  // two steps, so that no product can overflow
  const int64_t limit = int64_t{1} << 24, taps = p.kernel[0] * p.kernel[1];
  if (taps > limit || g->group_bits * taps > limit) {
    MX_ERROR_MSG << kXnorConv << ": each output sums C/num_group x KH x KW = " << g->group_bits
                 << " x " << p.kernel[0] << " x " << p.kernel[1]
                 << " products, more than 2^24, beyond which float32 outputs are not exact";
    return false;
  }
  const int64_t in[2] = {g->in_h, g->in_w};
  int64_t out[2];
  for (int a = 0; a < 2; ++a) {
    const int64_t span = p.dilate[a] * (p.kernel[a] - 1) + 1, padded = in[a] + 2 * p.pad[a];
    if (span > padded) {
      MX_ERROR_MSG << kXnorConv << ": the kernel spans " << span << " along " << "HW"[a]
                   << " (kernel " << p.kernel[a] << ", dilate " << p.dilate[a]
                   << "), more than the padded input's " << padded << " (" << "HW"[a] << " = "
                   << in[a] << ", pad " << p.pad[a] << ")";
      return false;
    }
    out[a] = (padded - span) / p.stride[a] + 1;
  }
  g->out_h = out[0];
  g->out_w = out[1];
  if (weight != nullptr) {
    const std::vector<int64_t>& w = *weight;
    const std::vector<int64_t> expected = {p.num_filter, p.kernel[0], p.kernel[1], g->group_words};
    if (w.size() != 4) {
      MX_ERROR_MSG << kXnorConv << ": weight must be 4-D (O, KH, KW, Wd) = "
                   << shape_str(expected) << ", got shape " << shape_str(w);
      return false;
    }
    if (w[0] != p.num_filter) {
      MX_ERROR_MSG << kXnorConv << ": weight has " << w[0]
                   << " output channels (axis 0) but num_filter = " << p.num_filter;
      return false;
    }
    if (w[1] != p.kernel[0] || w[2] != p.kernel[1]) {
      MX_ERROR_MSG << kXnorConv << ": weight holds a " << w[1] << " x " << w[2]
                   << " kernel (axes 1, 2) but kernel = (" << p.kernel[0] << ", " << p.kernel[1]
                   << ")";
      return false;
    }
    if (w[3] != g->group_words) {
      MX_ERROR_MSG << kXnorConv << ": weight holds Wd = " << w[3]
                   << " words per tap (axis 3) but C/num_group = " << g->channels << "/"
                   << p.num_group << " = " << g->group_bits << " channels take ceil("
                   << g->group_bits << "/64) = " << g->group_words;
      return false;
    }
  }
  return true;
}

MXReturnValue parse_xnor_conv(const Attrs& attrs, int* num_in, int* num_out) {
  XnorConvParams p;
  if (!parse_xnor_conv_params(attrs, &p)) return MX_FAIL;
  *num_in = 2;
  *num_out = 1;
  return MX_SUCCESS;
}

MXReturnValue infer_type_xnor_conv(const Attrs& attrs, std::vector<int>* in_types,
                                   std::vector<int>* out_types) {
  // -1 is a type not known yet: the only one each input may have is filled in
  int& data = in_types->at(0);
  int& weight = in_types->at(1);
  if (data == -1) data = kFloat32;
  if (weight == -1) weight = kInt64;
  if (data != kFloat32) {
    MX_ERROR_MSG << kXnorConv << ": data must be float32, got " << dtype_name(data)
                 << (data == kFloat16 ? " (float16 is not supported: cast the input to float32)"
                                      : "");
    return MX_FAIL;
  }
  if (weight != kInt64) {
    MX_ERROR_MSG << kXnorConv << ": weight must be int64 (packed sign words), got "
                 << dtype_name(weight)
                 << "; keep the packed parameter int64 when loading (SymbolBlock.imports does)";
    return MX_FAIL;
  }
  out_types->at(0) = kFloat32;
  return MX_SUCCESS;
}

// Whether MXNet knows a shape: some axes, none of them unknown (0 in MXNet's legacy shape
// semantics, -1 in numpy semantics, which arrives here as UINT_MAX).
bool shape_known(const std::vector<unsigned int>& shape) {
  return !shape.empty() && std::none_of(shape.begin(), shape.end(), [](unsigned int d) {
    return d == 0 || d == UINT_MAX;
  });
}

MXReturnValue infer_shape_xnor_conv(const Attrs& attrs,
                                    std::vector<std::vector<unsigned int>>* in_shapes,
                                    std::vector<std::vector<unsigned int>>* out_shapes) {
  XnorConvParams p;
  if (!parse_xnor_conv_params(attrs, &p)) return MX_FAIL;
  const std::vector<unsigned int>& d = in_shapes->at(0);
  const std::vector<unsigned int>& w = in_shapes->at(1);
  // without the data's shape nothing is known yet: the output stays unknown for now
  if (!shape_known(d)) return MX_SUCCESS;
  const std::vector<int64_t> data(d.begin(), d.end()), weight(w.begin(), w.end());
  XnorConvGeometry g;
  if (!xnor_conv_geometry(p, data, shape_known(w) ? &weight : nullptr, &g)) return MX_FAIL;
  in_shapes->at(1) = {static_cast<unsigned int>(p.num_filter),
                      static_cast<unsigned int>(p.kernel[0]),
                      static_cast<unsigned int>(p.kernel[1]),
                      static_cast<unsigned int>(g.group_words)};
  out_shapes->at(0) = {static_cast<unsigned int>(g.batch), static_cast<unsigned int>(p.num_filter),
                       static_cast<unsigned int>(g.out_h), static_cast<unsigned int>(g.out_w)};
  return MX_SUCCESS;
}

// The kernel variant: the best this CPU runs, unless bmx_ops_set_kernel forced another (tests
// check every variant against the reference this way).
std::atomic<int> forced_kernel{-1};

int op_kernel() {
  static const int best = bmx_kernel_best();
  const int forced = forced_kernel.load(std::memory_order_relaxed);
  return forced >= 0 ? forced : best;
}

// A stateful op so that the weights' re-layout for the kernels (panels, and the tap sums of
// zero padding) is made once, not on every call: for a batch-1 dense layer (a 1x1 convolution
// of a 1x1 image) it costs over ten times the product itself. MXNet keeps one state per graph
// node in bound executors and in static_alloc CachedOps; elsewhere (mx.nd calls, dynamic
// CachedOps) it makes one per call, which then simply packs once.
//
// The re-layout is reused while the weight tensor has the same data pointer, shape and version:
// MXNet bumps an NDArray's version (verID) on every write, so in-place updates such as
// load_parameters or set_data are seen, and so is a different array elsewhere in memory.
// (MXNet's own fused oneDNN convolution reuses its reordered weights by version alone.) The one
// case not seen is a new array placed at the freed address of the old one and written exactly
// as often.
class XnorConv2d : public CustomStatefulOp {
 public:
  explicit XnorConv2d(const XnorConvParams& p) : p_(p) {}

  MXReturnValue Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                        const OpResource& res) override;

  MXReturnValue Backward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                         const OpResource& res) override {
    MX_ERROR_MSG << kXnorConv << " is inference only and has no gradient (train the float model "
                 << "with bmx.nn layers, then pack it)";
    return MX_FAIL;
  }

 private:
  bool prepare_weights(MXTensor& weight, const XnorConvGeometry& g);

  const XnorConvParams p_;
  // the re-layout and what it was made from
  const void* weight_ptr_ = nullptr;
  size_t weight_version_ = 0;
  std::vector<int64_t> weight_shape_;
  int64_t group_bits_ = 0;
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<uint64_t, Free> panels_;  // on a cache line boundary, as the kernels prefer
  size_t panel_words_ = 0;
  std::vector<int32_t> tap_sums_;  // empty unless there is zero padding
};

bool XnorConv2d::prepare_weights(MXTensor& weight, const XnorConvGeometry& g) {
  if (weight.data_ptr == weight_ptr_ && weight.verID == weight_version_ &&
      weight.shape == weight_shape_ && g.group_bits == group_bits_)
    return true;
  weight_ptr_ = nullptr;  // no stale match should this fail
  const uint64_t* w = weight.data<uint64_t>();
  const size_t groups = p_.num_group, out_per_group = p_.num_filter / p_.num_group;
  const size_t taps = p_.kernel[0] * p_.kernel[1], row_words = taps * g.group_words;
  // set bits past Cg would count as channels that do not exist
  if (g.group_bits % 64 != 0) {
    const uint64_t tail = ~uint64_t{0} << (g.group_bits % 64);
    for (size_t r = 0; r < p_.num_filter * taps; ++r) {
      if (w[(r + 1) * g.group_words - 1] & tail) {
        MX_ERROR_MSG << kXnorConv << ": weight[" << r / taps << ", " << r % taps / p_.kernel[1]
                     << ", " << r % p_.kernel[1] << ", " << g.group_words - 1
                     << "] has bits set past the C/num_group = " << g.group_bits
                     << " channels it packs (they must be 0; pack with bmx.xnor.pack_weights)";
        return false;
      }
    }
  }
  const size_t words = bmx_xnor_panel_words(groups, out_per_group, row_words);
  if (words != panel_words_) {
    // not zeroed: bmx_xnor_pack_panels writes every word
    panels_.reset(static_cast<uint64_t*>(std::aligned_alloc(64, (words * 8 + 63) / 64 * 64)));
    if (!panels_) {
      panel_words_ = 0;
      MX_ERROR_MSG << kXnorConv << ": out of memory for the weights' panels (" << words * 8
                   << " bytes)";
      return false;
    }
    panel_words_ = words;
  }
  bmx_xnor_pack_panels(w, row_words, groups, out_per_group, row_words, panels_.get());
  tap_sums_.clear();
  if (p_.pad_zero && (p_.pad[0] || p_.pad[1])) {
    tap_sums_.resize(taps * p_.num_filter);
    bmx_conv_tap_sums(groups, g.group_bits, out_per_group, taps, panels_.get(), tap_sums_.data());
  }
  weight_ptr_ = weight.data_ptr;
  weight_version_ = weight.verID;
  weight_shape_ = weight.shape;
  group_bits_ = g.group_bits;
  return true;
}

MXReturnValue XnorConv2d::Forward(std::vector<MXTensor>* inputs, std::vector<MXTensor>* outputs,
                                  const OpResource& res) {
  MXTensor& data = inputs->at(0);
  MXTensor& weight = inputs->at(1);
  MXTensor& out = outputs->at(0);
  XnorConvGeometry g;
  if (!xnor_conv_geometry(p_, data.shape, &weight.shape, &g)) return MX_FAIL;
  if (out.size() == 0) return MX_SUCCESS;
  if (!prepare_weights(weight, g)) return MX_FAIL;

  // the packed input (N, H, W, G * Wd); the kernels write the float32 output themselves
  const size_t input_words = g.batch * g.in_h * g.in_w * p_.num_group * g.group_words;
  const size_t bytes = input_words * sizeof(uint64_t);
  if (bytes > static_cast<size_t>(INT_MAX)) {
    MX_ERROR_MSG << kXnorConv << ": this call needs " << bytes
                 << " bytes of scratch, more than the 2 GiB MXNet's temp space gives; "
                 << "use a smaller batch";
    return MX_FAIL;
  }
  uint64_t* input = static_cast<uint64_t*>(res.alloc_cpu(static_cast<int>(bytes)));

  const int kernel = op_kernel(), threads = op_threads();
  if (bmx_pack_nchw(data.data<float>(), g.batch, g.channels, g.in_h * g.in_w, p_.num_group,
                    nullptr, nullptr, input, kernel, threads) != 0) {
    MX_ERROR_MSG << kXnorConv << ": out of memory";
    return MX_FAIL;
  }
  bmx_conv_shape sh;
  sh.batch = g.batch;
  sh.in_h = g.in_h;
  sh.in_w = g.in_w;
  sh.pixel_words = p_.num_group * g.group_words;
  sh.groups = p_.num_group;
  sh.group_bits = g.group_bits;
  sh.out_per_group = p_.num_filter / p_.num_group;
  sh.kernel_h = p_.kernel[0];
  sh.kernel_w = p_.kernel[1];
  sh.stride_h = p_.stride[0];
  sh.stride_w = p_.stride[1];
  sh.pad_h = p_.pad[0];
  sh.pad_w = p_.pad[1];
  sh.dilation_h = p_.dilate[0];
  sh.dilation_w = p_.dilate[1];
  sh.pad_zero = p_.pad_zero;
  const int32_t* sums = tap_sums_.empty() ? nullptr : tap_sums_.data();
  bmx_conv_output result = {};
  result.nchw = out.data<float>();
  result.channel_stride = g.out_h * g.out_w;
  result.batch_stride = p_.num_filter * result.channel_stride;
  const int rc = bmx_xnor_conv(&sh, input, panels_.get(), sums, &result, kernel, threads);
  if (rc != 0) {
    MX_ERROR_MSG << kXnorConv
                 << (rc == -1 ? ": out of memory" : ": the kernels rejected the shape (code ")
                 << (rc == -1 ? "" : std::to_string(rc) + ")");
    return MX_FAIL;
  }
  return MX_SUCCESS;
}

MXReturnValue create_xnor_conv(const Attrs& attrs, const MXContext& ctx,
                               const std::vector<std::vector<unsigned int>>& in_shapes,
                               const std::vector<int> in_types, CustomStatefulOp** state) {
  XnorConvParams p;
  if (!parse_xnor_conv_params(attrs, &p)) return MX_FAIL;
  *state = CustomStatefulOp::create<XnorConv2d>(p);
  return MX_SUCCESS;
}

}  // namespace

// Forces the kernel variant of bmx_xnor_conv2d (a BMX_KERNEL_* of bitops.h, as bmx._xnor.KERNELS
// numbers them), or restores the automatic choice with -1; for the tests (ctypes). Returns 0, or
// -1 (and changes nothing) if this CPU cannot run that variant.
extern "C" int bmx_ops_set_kernel(int kernel) {
  if (kernel >= 0 && !bmx_kernel_available(kernel)) return -1;
  forced_kernel.store(kernel < 0 ? -1 : kernel, std::memory_order_relaxed);
  return 0;
}

// The kernel variant bmx_xnor_conv2d runs now, for the tests (ctypes).
extern "C" int bmx_ops_kernel() { return op_kernel(); }

REGISTER_OP(bmx_xnor_conv2d)
    .setParseAttrs(parse_xnor_conv)
    .setInferType(infer_type_xnor_conv)
    .setInferShape(infer_shape_xnor_conv)
    .setCreateOpState(create_xnor_conv, "cpu");
