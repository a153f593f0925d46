// libFuzzer target for everything skv reads from files: safetensors headers, checkpoints (one file
// or a sharded index), config.json and K/V dumps. Every input must be accepted or rejected with
// skv::Error, never crash, hang or read out of bounds (built with -fsanitize=fuzzer,address,undefined
// by calib.cmake; `cmake --workflow --preset fuzz` builds and runs it for a bounded time).
//
// The first byte picks the reader, the rest is the file:
//   0  parse_safetensors_header on the bytes
//   1  a checkpoint file: every tensor read as floats, then the K/V weight norms
//   2  config.json: read_model_config
//   3  a K/V dump: every layer read, then the distortion table when the dump is small
//   4  a sharded checkpoint folder: the bytes up to the first NUL are model.safetensors.index.json,
//      the rest is the shard "s.safetensors"
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <sys/stat.h>
#include <unistd.h>

#include <skv/calib/dump.hpp>
#include <skv/calib/norms.hpp>
#include <skv/io/safetensors.hpp>

namespace {

/// A private folder for the files of one fuzzing process.
const std::string& work_dir() {
  static const std::string dir = [] {
    char templ[] = "/tmp/skv_fuzz_XXXXXX";
    if (!::mkdtemp(templ)) std::abort();
    return std::string(templ);
  }();
  return dir;
}

void write_file(const std::string& path, const std::uint8_t* data, std::size_t size) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
}

void fuzz_header(const std::uint8_t* data, std::size_t size) {
  const skv::io::Header h = skv::io::parse_safetensors_header(data, size, "fuzz");
  for (const auto& t : h.tensors)  // every accepted entry lies inside the input
    if (h.data_offset + t.end > size || t.begin > t.end) __builtin_trap();
}

void read_checkpoint(const skv::io::Checkpoint& ck) {
  for (const auto& name : ck.names()) {
    const auto t = ck.tensor(name);
    if (t.dtype() == skv::io::DType::F32 || t.dtype() == skv::io::DType::F16 || t.dtype() == skv::io::DType::BF16 ||
        t.dtype() == skv::io::DType::F64)
      if (t.to_float().size() != t.numel()) __builtin_trap();
  }
  skv::calib::NormOptions o;
  o.max_iterations = 50;
  o.per_head = true;
  o.head_dim = 4;
  skv::calib::compute_norms(ck, o, nullptr);
}

void fuzz_dump(const std::string& path) {
  const skv::calib::KVDump dump(path);
  for (int n = 0; n < dump.num_layers(); ++n) {
    const auto l = dump.layer(n);
    if (l.k.size() != static_cast<std::size_t>(l.tokens) * l.kv_heads * l.head_dim) __builtin_trap();
  }
  // the O(head_dim^2) score-space measurement only on small dumps (the fuzzer wants many runs)
  if (static_cast<long>(dump.tokens()) * dump.kv_heads() * dump.head_dim() * dump.num_layers() <= 65536 &&
      dump.head_dim() <= 64) {
    skv::calib::DistortionOptions o;
    o.bits = {2, 4};
    o.key_group = 4;
    o.value_group = 1;
    while (o.value_group * 2 <= 64 && dump.head_dim() % (o.value_group * 2) == 0) o.value_group *= 2;
    if (o.value_group >= 4) skv::calib::measure_distortion(dump, o);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const int mode = data[0] % 5;
  ++data;
  --size;
  const std::string& dir = work_dir();
  try {
    switch (mode) {
      case 0:
        fuzz_header(data, size);
        break;
      case 1:
        write_file(dir + "/c.safetensors", data, size);
        read_checkpoint(skv::io::Checkpoint(dir + "/c.safetensors"));
        break;
      case 2:
        write_file(dir + "/config.json", data, size);
        skv::io::read_model_config(dir + "/config.json");
        break;
      case 3:
        write_file(dir + "/d.safetensors", data, size);
        fuzz_dump(dir + "/d.safetensors");
        break;
      default: {
        std::size_t cut = 0;
        while (cut < size && data[cut] != 0) ++cut;
        const std::string shard = dir + "/shards";
        ::mkdir(shard.c_str(), 0700);
        write_file(shard + "/model.safetensors.index.json", data, cut);
        write_file(shard + "/s.safetensors", data + (cut < size ? cut + 1 : size), cut < size ? size - cut - 1 : 0);
        read_checkpoint(skv::io::Checkpoint(shard));
        break;
      }
    }
  } catch (const skv::Error&) {
  }
  return 0;
}
