// libFuzzer target: the safetensors header parser must reject any input with skv::Error, never
// crash or read out of bounds (built with -fsanitize=fuzzer,address,undefined by calib.cmake).
#include <cstddef>
#include <cstdint>

#include <skv/io/safetensors.hpp>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const skv::io::Header h = skv::io::parse_safetensors_header(data, size, "fuzz");
    // Every accepted entry must lie inside the input.
    for (const auto& t : h.tensors)
      if (h.data_offset + t.end > size || t.begin > t.end) __builtin_trap();
  } catch (const skv::Error&) {
  }
  return 0;
}
