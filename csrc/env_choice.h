// Kernel-variant switches read from the environment on every call (so tests and benchmarks can
// flip them), e.g. MTLKIT_ATTN_CORE=simt|tc and MTLKIT_HDC_DW=pixel|band.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <initializer_list>
#include <string>

namespace mtlkit {

// The value of `name`, or `fallback` when it is unset or empty; anything outside `allowed` is
// an error naming the variable, the accepted values and the fix.
inline std::string env_choice(const char* name, std::initializer_list<const char*> allowed,
                              const char* fallback) {
  const char* env = std::getenv(name);
  const std::string value = env != nullptr && env[0] != '\0' ? env : fallback;
  std::string accepted;
  for (const char* a : allowed) {
    if (value == a) return value;
    accepted += (accepted.empty() ? "'" : ", '") + std::string(a) + "'";
  }
  TORCH_CHECK(false, name, " must be one of ", accepted, ", got '", value,
              "'; unset it for the default ('", fallback, "')");
}

}  // namespace mtlkit
