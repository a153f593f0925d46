// skv/io/safetensors.hpp: reading and writing safetensors files, sharded checkpoints and config.json
// (host only; POSIX mmap; needs nlohmann-json).
//
// Format (https://huggingface.co/docs/safetensors): 8 bytes little-endian header length N, N bytes
// of JSON {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
// then the data; offsets are relative to the first byte after the header.
//
// Nothing in a file is trusted: the header length, every dtype, shape, offset and size is checked
// (overflow included) before a byte of tensor data is touched, and errors name the file and the
// tensor. parse_safetensors_header() is the part a fuzzer drives (tests/host/calib/fuzz_safetensors.cpp).
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <skv/error.hpp>
#include <skv/numeric/half.hpp>

namespace skv {
namespace io {

/// Element types of the safetensors format. F32, F16 and BF16 can be read as floats; the others are
/// recognised (so a checkpoint holding them can be opened) but not converted.
enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, Bool, F8E4M3, F8E5M2 };

namespace detail {
struct DTypeName {
  DType type;
  const char* name;
  std::size_t size;
};
inline const std::vector<DTypeName>& dtype_table() {
  static const std::vector<DTypeName> table = {
      {DType::F64, "F64", 8},  {DType::F32, "F32", 4},       {DType::F16, "F16", 2},        {DType::BF16, "BF16", 2},
      {DType::I64, "I64", 8},  {DType::I32, "I32", 4},       {DType::I16, "I16", 2},        {DType::I8, "I8", 1},
      {DType::U64, "U64", 8},  {DType::U32, "U32", 4},       {DType::U16, "U16", 2},        {DType::U8, "U8", 1},
      {DType::Bool, "BOOL", 1}, {DType::F8E4M3, "F8_E4M3", 1}, {DType::F8E5M2, "F8_E5M2", 1}};
  return table;
}
}  // namespace detail

inline const char* dtype_name(DType t) {
  for (const auto& d : detail::dtype_table())
    if (d.type == t) return d.name;
  return "?";
}
inline std::size_t dtype_size(DType t) {
  for (const auto& d : detail::dtype_table())
    if (d.type == t) return d.size;
  return 0;
}
/// The dtype named `name`; false when it is not a safetensors dtype.
inline bool parse_dtype(const std::string& name, DType& out) {
  for (const auto& d : detail::dtype_table())
    if (name == d.name) {
      out = d.type;
      return true;
    }
  return false;
}

/// One tensor's entry in a header, validated against the data size.
struct TensorEntry {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::size_t begin = 0;  ///< byte offset from the start of the data section
  std::size_t end = 0;

  std::size_t bytes() const { return end - begin; }
  std::size_t numel() const { return dtype_size(dtype) ? bytes() / dtype_size(dtype) : 0; }
};

/// A parsed header: tensors in file order of their data, plus the free-form metadata strings.
struct Header {
  std::vector<TensorEntry> tensors;
  std::map<std::string, std::string> metadata;
  std::size_t data_offset = 0;  ///< first data byte within the file (8 + header length)
};

namespace detail {
/// `s` with every byte outside printable ASCII written as \xNN: parser messages quote the input,
/// which may be anything (invalid UTF-8, control characters).
inline std::string printable(const std::string& s) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (const char ch : s) {
    const auto b = static_cast<unsigned char>(ch);
    if (b >= 0x20 && b < 0x7f) {
      out.push_back(ch);
    } else {
      out += "\\x";
      out.push_back(hex[b >> 4]);
      out.push_back(hex[b & 15]);
    }
  }
  return out;
}
}  // namespace detail

/// Parses and validates the header of a safetensors image of `size` bytes at `data` (the whole file;
/// only the header part and `size` are used). `file` names the source in error messages.
inline Header parse_safetensors_header(const std::uint8_t* data, std::size_t size, const std::string& file) {
  auto fail = [&](const std::string& what) -> Error { return Error(file + ": " + what); };
  if (size < 8) throw fail("not a safetensors file: " + std::to_string(size) + " bytes, shorter than the 8-byte header length");
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | data[i];
  if (n > size - 8)
    throw fail("header length " + std::to_string(n) + " exceeds the file (" + std::to_string(size) +
               " bytes): truncated or not a safetensors file");
  if (n < 2) throw fail("header length " + std::to_string(n) + " is too short for a JSON object");
  Header h;
  h.data_offset = 8 + static_cast<std::size_t>(n);
  const std::size_t data_size = size - h.data_offset;
  nlohmann::json j;
  // nlohmann::json keeps the last of repeated keys; a header naming a tensor twice is corrupt
  std::vector<std::string> top_keys;
  const nlohmann::json::parser_callback_t note_keys = [&](int depth, nlohmann::json::parse_event_t event,
                                                          nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && parsed.is_string())
      top_keys.push_back(parsed.get<std::string>());
    return true;
  };
  try {
    j = nlohmann::json::parse(data + 8, data + h.data_offset, note_keys);
  } catch (const nlohmann::json::exception& e) {
    throw fail("header is not valid JSON: " + detail::printable(e.what()));
  }
  std::sort(top_keys.begin(), top_keys.end());
  const auto repeated = std::adjacent_find(top_keys.begin(), top_keys.end());
  if (repeated != top_keys.end()) throw fail("the header names '" + detail::printable(*repeated) + "' twice");
  if (!j.is_object()) throw fail("header is not a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      if (!e.is_object()) throw fail("__metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        if (!m.value().is_string()) throw fail("__metadata__ entry '" + m.key() + "' is not a string");
        h.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto bad = [&](const std::string& what) -> Error { return fail("tensor '" + name + "': " + what); };
    if (!e.is_object()) throw bad("entry is not an object");
    TensorEntry t;
    t.name = name;
    const auto dt = e.find("dtype");
    if (dt == e.end() || !dt->is_string()) throw bad("missing or non-string dtype");
    if (!parse_dtype(dt->get<std::string>(), t.dtype)) throw bad("unknown dtype '" + dt->get<std::string>() + "'");
    const auto sh = e.find("shape");
    if (sh == e.end() || !sh->is_array()) throw bad("missing or non-array shape");
    if (sh->size() > 16) throw bad("shape has " + std::to_string(sh->size()) + " dimensions (at most 16 accepted)");
    std::uint64_t numel = 1;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned() && !(d.is_number_integer() && d.get<std::int64_t>() >= 0))
        throw bad("shape entries must be non-negative integers");
      const std::uint64_t v = d.get<std::uint64_t>();
      if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()) ||
          (v != 0 && numel > std::numeric_limits<std::uint64_t>::max() / v))
        throw bad("shape overflows");
      numel *= v;
      t.shape.push_back(static_cast<std::int64_t>(v));
    }
    const auto off = e.find("data_offsets");
    if (off == e.end() || !off->is_array() || off->size() != 2) throw bad("data_offsets must be an array [begin, end]");
    for (const auto& o : *off)
      if (!o.is_number_unsigned() && !(o.is_number_integer() && o.get<std::int64_t>() >= 0))
        throw bad("data_offsets must be non-negative integers");
    const std::uint64_t b = (*off)[0].get<std::uint64_t>(), en = (*off)[1].get<std::uint64_t>();
    if (b > en) throw bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(en) + "] are reversed");
    if (en > data_size)
      throw bad("data_offsets end " + std::to_string(en) + " is past the end of the data (" + std::to_string(data_size) +
                " bytes): file truncated?");
    const std::uint64_t es = dtype_size(t.dtype);
    if (numel > std::numeric_limits<std::uint64_t>::max() / es || numel * es != en - b)
      throw bad("holds " + std::to_string(en - b) + " bytes but its shape and dtype need " +
                (numel > std::numeric_limits<std::uint64_t>::max() / es ? std::string("more than 2^64")
                                                                         : std::to_string(numel * es)));
    t.begin = static_cast<std::size_t>(b);
    t.end = static_cast<std::size_t>(en);
    h.tensors.push_back(std::move(t));
  }
  std::sort(h.tensors.begin(), h.tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (std::size_t i = 1; i < h.tensors.size(); ++i)
    if (h.tensors[i].begin < h.tensors[i - 1].end)
      throw fail("tensors '" + h.tensors[i - 1].name + "' and '" + h.tensors[i].name + "' overlap");
  return h;
}

namespace detail {
/// A read-only memory map of a whole file (or an owned buffer for empty files).
class MappedFile {
 public:
  explicit MappedFile(const std::string& path) : path_(path) {
    // a FIFO or a device would block in open() or read forever: only regular files are opened, and
    // without blocking in case the path changes between the check and the open
    struct stat pre {};
    if (::stat(path.c_str(), &pre) != 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    if (!S_ISREG(pre.st_mode)) throw Error(path + ": not a regular file");
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) throw Error(path + ": cannot open (" + std::strerror(errno) + ")");
    struct stat st {};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw Error(path + ": not a regular file");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const std::string why = std::strerror(errno);
        ::close(fd);
        throw Error(path + ": mmap failed (" + why + ")");
      }
      data_ = static_cast<const std::uint8_t*>(p);
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

inline float element_to_float(const std::uint8_t* p, DType t) {
  switch (t) {
    case DType::F32: {
      float f;
      std::memcpy(&f, p, 4);
      return f;
    }
    case DType::F64: {
      double d;
      std::memcpy(&d, p, 8);
      return static_cast<float>(d);
    }
    case DType::F16: {
      fp16 h;
      h.bits = static_cast<std::uint16_t>(p[0] | (p[1] << 8));
      return to_float(h);
    }
    case DType::BF16: {
      bf16 b;
      b.bits = static_cast<std::uint16_t>(p[0] | (p[1] << 8));
      return to_float(b);
    }
    default:
      return 0.0f;
  }
}
}  // namespace detail

/// A tensor inside an open file: its entry plus a pointer to its bytes (valid while the file lives).
struct TensorRef {
  const TensorEntry* entry = nullptr;
  const std::uint8_t* data = nullptr;
  const std::string* file = nullptr;

  const std::string& name() const { return entry->name; }
  DType dtype() const { return entry->dtype; }
  const std::vector<std::int64_t>& shape() const { return entry->shape; }
  std::size_t numel() const { return entry->numel(); }

  /// The elements as floats (F32, F16, BF16 and F64; anything else is an error naming the tensor).
  std::vector<float> to_float() const {
    const DType t = entry->dtype;
    if (t != DType::F32 && t != DType::F16 && t != DType::BF16 && t != DType::F64)
      throw Error(*file + ": tensor '" + entry->name + "' has dtype " + dtype_name(t) +
                  "; only F32, F16, BF16 and F64 can be read as floats");
    const std::size_t n = numel(), es = dtype_size(t);
    std::vector<float> out(n);
    for (std::size_t i = 0; i < n; ++i) out[i] = detail::element_to_float(data + i * es, t);
    return out;
  }
};

/// One memory-mapped, validated safetensors file.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::string& path) : map_(std::make_unique<detail::MappedFile>(path)) {
    header_ = parse_safetensors_header(map_->data(), map_->size(), path);
    for (std::size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
  }

  const std::string& path() const { return map_->path(); }
  const Header& header() const { return header_; }
  const std::vector<TensorEntry>& tensors() const { return header_.tensors; }
  bool contains(const std::string& name) const { return index_.count(name) != 0; }

  TensorRef tensor(const std::string& name) const {
    const auto it = index_.find(name);
    if (it == index_.end()) throw Error(path() + ": no tensor named '" + name + "'");
    const TensorEntry& e = header_.tensors[it->second];
    return TensorRef{&e, map_->data() + header_.data_offset + e.begin, &map_->path()};
  }

 private:
  std::unique_ptr<detail::MappedFile> map_;
  Header header_;
  std::map<std::string, std::size_t> index_;
};

namespace detail {
inline bool is_directory(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}
inline bool is_file(const std::string& p) {
  struct stat st {};
  return ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}
inline std::string join_path(const std::string& dir, const std::string& name) {
  return dir.empty() || dir.back() == '/' ? dir + name : dir + "/" + name;
}
inline std::string parent_dir(const std::string& p) {
  const auto s = p.find_last_of('/');
  return s == std::string::npos ? std::string(".") : (s == 0 ? std::string("/") : p.substr(0, s));
}
inline nlohmann::json read_json_file(const std::string& path) {
  const MappedFile file(path);  // a regular file, opened without blocking
  try {
    if (file.size() == 0) return nlohmann::json::parse(std::string());  // the parser's own "empty input" error
    return nlohmann::json::parse(file.data(), file.data() + file.size());
  } catch (const nlohmann::json::exception& e) {
    throw Error(path + ": not valid JSON (" + printable(e.what()) + ")");
  }
}
}  // namespace detail

/// A model checkpoint: one safetensors file, or a folder with model.safetensors or a sharded
/// model.safetensors.index.json ({"weight_map": {"tensor": "shard file"}}).
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& path) {
    if (detail::is_directory(path)) {
      dir_ = path;
      const std::string index = detail::join_path(path, "model.safetensors.index.json");
      const std::string single = detail::join_path(path, "model.safetensors");
      if (detail::is_file(index)) {
        open_index(index);
      } else if (detail::is_file(single)) {
        add_file(single);
      } else {
        throw Error(path + ": no model.safetensors or model.safetensors.index.json in this folder");
      }
    } else {
      dir_ = detail::parent_dir(path);
      if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0)
        open_index(path);
      else
        add_file(path);
    }
  }

  /// The folder holding the checkpoint (where config.json is looked for).
  const std::string& directory() const { return dir_; }
  /// Every tensor name, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& kv : where_) out.push_back(kv.first);
    return out;
  }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  TensorRef tensor(const std::string& name) const {
    const auto it = where_.find(name);
    if (it == where_.end()) throw Error(dir_ + ": the checkpoint has no tensor named '" + name + "'");
    return files_[it->second]->tensor(name);
  }
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  void add_file(const std::string& file) {
    files_.push_back(std::make_unique<SafetensorsFile>(file));
    for (const auto& t : files_.back()->tensors()) {
      if (where_.count(t.name)) throw Error(file + ": tensor '" + t.name + "' also appears in another shard");
      where_[t.name] = files_.size() - 1;
    }
  }
  void open_index(const std::string& index) {
    const nlohmann::json j = detail::read_json_file(index);
    const auto wm = j.find("weight_map");
    if (!j.is_object() || wm == j.end() || !wm->is_object()) throw Error(index + ": no \"weight_map\" object");
    std::map<std::string, std::vector<std::string>> by_file;
    for (auto it = wm->begin(); it != wm->end(); ++it) {
      if (!it.value().is_string()) throw Error(index + ": weight_map entry '" + it.key() + "' is not a file name");
      const std::string shard = it.value().get<std::string>();
      if (shard.find('/') != std::string::npos || shard == ".." || shard.empty())
        throw Error(index + ": weight_map entry '" + it.key() + "' names a file outside the folder: '" + shard + "'");
      by_file[shard].push_back(it.key());
    }
    const std::string dir = detail::parent_dir(index);
    for (const auto& kv : by_file) {
      add_file(detail::join_path(dir, kv.first));
      const SafetensorsFile& f = *files_.back();
      for (const auto& name : kv.second)
        if (!f.contains(name))
          throw Error(f.path() + ": the index says it holds tensor '" + name + "' but it does not");
    }
  }

  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, std::size_t> where_;
};

/// Attention geometry from a Hugging Face config.json (Llama / Mistral / Qwen / Phi-3 / GPT-2 names).
struct ModelConfig {
  std::string model_type;
  int num_layers = 0;
  int num_heads = 0;     ///< query heads
  int num_kv_heads = 0;  ///< key/value heads (== num_heads without GQA)
  int head_dim = 0;
  int hidden_size = 0;
};

inline ModelConfig parse_model_config(const nlohmann::json& config, const std::string& file) {
  if (!config.is_object()) throw Error(file + ": config is not a JSON object");
  // Multimodal configs nest the language model; real ones one level deep, so a few levels suffice
  // (a loop, not recursion: a crafted file may nest thousands).
  const nlohmann::json* level = &config;
  for (int depth = 0; level->contains("text_config") && (*level)["text_config"].is_object() &&
                      !level->contains("num_attention_heads");
       ++depth) {
    if (depth == 4) throw Error(file + ": text_config nested more than 4 levels deep");
    level = &(*level)["text_config"];
  }
  const nlohmann::json& j = *level;
  auto get_int = [&](std::initializer_list<const char*> keys, int fallback) {
    for (const char* k : keys) {
      const auto it = j.find(k);
      if (it != j.end() && !it->is_null()) {
        if (!it->is_number_integer() || it->get<std::int64_t>() <= 0 || it->get<std::int64_t>() > (1 << 24))
          throw Error(file + ": '" + k + "' must be a positive integer");
        return static_cast<int>(it->get<std::int64_t>());
      }
    }
    return fallback;
  };
  ModelConfig c;
  if (j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"].get<std::string>();
  c.num_layers = get_int({"num_hidden_layers", "n_layer", "num_layers"}, 0);
  c.num_heads = get_int({"num_attention_heads", "n_head"}, 0);
  c.hidden_size = get_int({"hidden_size", "n_embd"}, 0);
  if (c.num_heads == 0) throw Error(file + ": no num_attention_heads / n_head");
  c.num_kv_heads = get_int({"num_key_value_heads", "num_kv_heads"}, c.num_heads);
  if (c.num_heads % c.num_kv_heads != 0)
    throw Error(file + ": num_attention_heads (" + std::to_string(c.num_heads) + ") is not a multiple of num_key_value_heads (" +
                std::to_string(c.num_kv_heads) + ")");
  c.head_dim = get_int({"head_dim"}, 0);
  if (c.head_dim == 0) {
    if (c.hidden_size == 0 || c.hidden_size % c.num_heads != 0)
      throw Error(file + ": no head_dim and hidden_size is not a multiple of num_attention_heads");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  return c;
}

/// Reads config.json (a file path, or a folder containing one).
inline ModelConfig read_model_config(const std::string& path) {
  const std::string file = detail::is_directory(path) ? detail::join_path(path, "config.json") : path;
  return parse_model_config(detail::read_json_file(file), file);
}

/// A tensor to write: name, dtype (F32, F16 or BF16) and shape; `values` are converted on write.
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::vector<float> values;
};

/// Writes a safetensors file (header padded to 8 bytes, tensors in the given order). Throws on a
/// shape/size mismatch, a duplicate name, an unsupported dtype or an I/O error.
inline void write_safetensors(const std::string& path, const std::vector<TensorData>& tensors,
                              const std::map<std::string, std::string>& metadata = {}) {
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  if (!metadata.empty()) h["__metadata__"] = metadata;
  std::size_t offset = 0;
  for (const auto& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__" || h.contains(t.name))
      throw Error(path + ": invalid or duplicate tensor name '" + t.name + "'");
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      throw Error(path + ": tensor '" + t.name + "': only F32, F16 and BF16 can be written");
    std::size_t n = 1;
    for (const auto d : t.shape) {
      if (d < 0) throw Error(path + ": tensor '" + t.name + "' has a negative dimension");
      n *= static_cast<std::size_t>(d);
    }
    if (n != t.values.size())
      throw Error(path + ": tensor '" + t.name + "' has " + std::to_string(t.values.size()) + " values for a shape of " +
                  std::to_string(n));
    const std::size_t bytes = n * dtype_size(t.dtype);
    h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header = h.dump();
  while (header.size() % 8 != 0) header.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw Error(path + ": cannot open for writing");
  unsigned char len[8];
  std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<unsigned char>((n >> (8 * i)) & 0xffu);
  out.write(reinterpret_cast<const char*>(len), 8);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  std::vector<unsigned char> buf;
  for (const auto& t : tensors) {
    const std::size_t es = dtype_size(t.dtype);
    buf.assign(t.values.size() * es, 0);
    for (std::size_t i = 0; i < t.values.size(); ++i) {
      unsigned char* p = buf.data() + i * es;
      if (t.dtype == DType::F32) {
        std::memcpy(p, &t.values[i], 4);
      } else {
        const std::uint16_t bits = t.dtype == DType::F16 ? to_fp16(t.values[i]).bits : to_bf16(t.values[i]).bits;
        p[0] = static_cast<unsigned char>(bits & 0xffu);
        p[1] = static_cast<unsigned char>(bits >> 8);
      }
    }
    out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  }
  if (!out) throw Error(path + ": write failed");
}

}  // namespace io
}  // namespace skv
