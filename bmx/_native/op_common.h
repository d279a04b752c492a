// What bmx's two MXNet operator sources (ops.cc: the training ops; xnor_conv_op.cc: the packed
// binary convolution) share: attribute parsing and the thread count of their OpenMP loops.
#ifndef BMX_OP_COMMON_H_
#define BMX_OP_COMMON_H_

#include <omp.h>
#include <sched.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <unordered_map>

#include "lib_api.h"

namespace bmx_ops {

typedef std::unordered_map<std::string, std::string> Attrs;

// Below this many elements, starting a thread team costs more than it saves.
const int64_t kParallelGrain = 1 << 15;

// Threads per op: OMP_NUM_THREADS if set, else every core this process may use. Asked of the
// environment rather than of OpenMP because MXNet runs ops on engine threads whose OpenMP default
// it has lowered to 1 (its own ops pass an explicit count, as these do).
inline int op_threads() {
  static const int threads = [] {
    const char* setting = std::getenv("OMP_NUM_THREADS");
    if (setting != nullptr) {
      int n = std::atoi(setting);
      if (n > 0) return n;
    }
    cpu_set_t cpus;
    if (sched_getaffinity(0, sizeof(cpus), &cpus) == 0 && CPU_COUNT(&cpus) > 0) return CPU_COUNT(&cpus);
    return omp_get_num_procs();
  }();
  return threads;
}

inline bool get_float(const Attrs& attrs, const char* key, float fallback, float* out) {
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

inline bool get_int(const Attrs& attrs, const char* key, int fallback, int* out) {
  float v;
  if (!get_float(attrs, key, static_cast<float>(fallback), &v)) return false;
  if (v != std::floor(v)) {
    MX_ERROR_MSG << "attribute '" << key << "' must be an integer, got " << v;
    return false;
  }
  *out = static_cast<int>(v);
  return true;
}

}  // namespace bmx_ops

#endif  // BMX_OP_COMMON_H_
