// Safetensors I/O: round trips in every float dtype, sharded checkpoints, config.json, and files
// that are truncated or corrupted in every way the header can be (each must give an skv::Error that
// names the file and, where there is one, the tensor).
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <skv/io/safetensors.hpp>

#include <sys/stat.h>

#include "helpers.hpp"

namespace {

using skv::io::DType;

std::vector<float> ramp(std::size_t n, float scale) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = scale * (static_cast<float>(i) - static_cast<float>(n) / 3.0f);
  return v;
}

/// Writes a file from a raw header string and data size (for corruptions the writer refuses).
void write_raw(const std::string& path, const std::string& header, std::size_t data_bytes) {
  std::vector<std::uint8_t> b(8 + header.size() + data_bytes, 0);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(n >> (8 * i));
  std::memcpy(b.data() + 8, header.data(), header.size());
  skv_test::write_bytes(path, b);
}

std::string error_of(const std::string& path) {
  try {
    skv::io::SafetensorsFile f(path);
    for (const auto& t : f.tensors()) (void)f.tensor(t.name).to_float();
  } catch (const skv::Error& e) {
    return e.what();
  }
  return "";
}

TEST(Safetensors, RoundTripsF32F16Bf16) {
  skv_test::TempDir dir;
  const auto a = ramp(24, 0.25f), b = ramp(6, 1.0f), c = ramp(10, 0.5f);
  skv::io::write_safetensors(dir.file("x.safetensors"),
                             {{"a", DType::F32, {2, 3, 4}, a}, {"b", DType::F16, {6}, b}, {"c", DType::BF16, {5, 2}, c}},
                             {{"format", "pt"}});
  skv::io::SafetensorsFile f(dir.file("x.safetensors"));
  ASSERT_EQ(f.tensors().size(), 3u);
  EXPECT_EQ(f.header().metadata.at("format"), "pt");
  EXPECT_EQ(f.header().data_offset % 8, 0u);
  EXPECT_EQ(f.tensor("a").shape(), (std::vector<std::int64_t>{2, 3, 4}));
  EXPECT_EQ(f.tensor("a").to_float(), a);  // F32 exact
  const auto fb = f.tensor("b").to_float();
  for (std::size_t i = 0; i < b.size(); ++i) EXPECT_EQ(fb[i], skv::to_float(skv::to_fp16(b[i])));
  const auto fc = f.tensor("c").to_float();
  for (std::size_t i = 0; i < c.size(); ++i) EXPECT_EQ(fc[i], skv::to_float(skv::to_bf16(c[i])));
  EXPECT_EQ(f.tensor("c").dtype(), DType::BF16);
  EXPECT_EQ(f.tensor("c").numel(), 10u);
  EXPECT_THROW(f.tensor("missing"), skv::Error);
}

TEST(Safetensors, ZeroSizedTensorsAndEmptyFiles) {
  skv_test::TempDir dir;
  skv::io::write_safetensors(dir.file("z.safetensors"), {{"empty", DType::F32, {0, 4}, {}}});
  skv::io::SafetensorsFile f(dir.file("z.safetensors"));
  EXPECT_TRUE(f.tensor("empty").to_float().empty());
  skv::io::write_safetensors(dir.file("none.safetensors"), {});
  EXPECT_TRUE(skv::io::SafetensorsFile(dir.file("none.safetensors")).tensors().empty());
}

TEST(Safetensors, WriterRejectsBadInput) {
  skv_test::TempDir dir;
  EXPECT_THROW(skv::io::write_safetensors(dir.file("w"), {{"a", DType::F32, {3}, {1, 2}}}), skv::Error);
  EXPECT_THROW(skv::io::write_safetensors(dir.file("w"), {{"a", DType::F32, {1}, {1}}, {"a", DType::F32, {1}, {1}}}), skv::Error);
  EXPECT_THROW(skv::io::write_safetensors(dir.file("w"), {{"a", DType::I32, {1}, {1}}}), skv::Error);
  EXPECT_THROW(skv::io::write_safetensors(dir.path() + "/no/such/dir/w", {}), skv::Error);
}

TEST(Safetensors, EveryTruncationIsAnErrorNamingTheFile) {
  skv_test::TempDir dir;
  const std::string good = dir.file("good.safetensors");
  skv::io::write_safetensors(good, {{"w", DType::F16, {4, 4}, ramp(16, 0.1f)}, {"b", DType::F32, {4}, ramp(4, 1.0f)}});
  const auto bytes = skv_test::read_bytes(good);
  ASSERT_GT(bytes.size(), 60u);
  const std::string cut = dir.file("cut.safetensors");
  for (std::size_t n = 0; n < bytes.size(); ++n) {
    skv_test::write_bytes(cut, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(n)));
    const std::string msg = error_of(cut);
    ASSERT_FALSE(msg.empty()) << "a file truncated to " << n << " bytes was accepted";
    EXPECT_NE(msg.find("cut.safetensors"), std::string::npos) << msg;
  }
  // A truncation inside the data names the tensor whose bytes are missing.
  skv_test::write_bytes(cut, std::vector<std::uint8_t>(bytes.begin(), bytes.end() - 1));
  EXPECT_NE(error_of(cut).find("tensor 'b'"), std::string::npos) << error_of(cut);
  EXPECT_TRUE(error_of(good).empty());
}

TEST(Safetensors, CorruptHeadersAreErrorsNamingFileAndTensor) {
  skv_test::TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  struct Case {
    std::string header;
    std::size_t data;
    std::string expect;  // substring of the message
  };
  const std::vector<Case> cases = {
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}", 8, "not valid JSON"},
      {"[1,2,3]", 0, "not a JSON object"},
      {"{\"t\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 't': unknown dtype 'F33'"},
      {"{\"t\":{\"shape\":[2],\"data_offsets\":[0,8]}}", 8, "tensor 't': missing or non-string dtype"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8, "tensor 't': shape entries"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 8, "tensor 't': shape entries"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":2,\"data_offsets\":[0,8]}}", 8, "tensor 't': missing or non-array shape"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "tensor 't': holds 8 bytes but its shape and dtype need 12"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}", 8, "tensor 't': data_offsets end 16 is past the end"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 8, "tensor 't': data_offsets [8, 0] are reversed"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0]}}", 8, "tensor 't': data_offsets must be"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,-8]}}", 8, "tensor 't': data_offsets must be non-negative"},
      {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,16],\"data_offsets\":[0,8]}}", 8, "tensor 't': shape overflows"},
      {"{\"t\":{\"dtype\":\"F64\",\"shape\":[2305843009213693952],\"data_offsets\":[0,8]}}", 8, "more than 2^64"},
      {"{\"t\":5}", 0, "tensor 't': entry is not an object"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, "'a' and 'b' overlap"},
      {"{\"__metadata__\":{\"x\":1}}", 0, "__metadata__ entry 'x' is not a string"},
  };
  for (const auto& c : cases) {
    write_raw(p, c.header, c.data);
    const std::string msg = error_of(p);
    EXPECT_NE(msg.find(c.expect), std::string::npos) << "header " << c.header << "\n got: " << msg;
    EXPECT_EQ(msg.rfind("skv: " + p, 0), 0u) << msg;
  }
  // A header length that runs past the file.
  std::vector<std::uint8_t> b(16, 0);
  b[0] = 0xff;
  b[7] = 0x7f;
  skv_test::write_bytes(p, b);
  EXPECT_NE(error_of(p).find("exceeds the file"), std::string::npos) << error_of(p);
  // Non-float dtypes are recognised but cannot be read as floats.
  write_raw(p, "{\"i\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
  skv::io::SafetensorsFile f(p);
  EXPECT_EQ(f.tensor("i").dtype(), DType::I32);
  try {
    (void)f.tensor("i").to_float();
    FAIL();
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'i' has dtype I32"), std::string::npos) << e.what();
  }
  EXPECT_NE(error_of(dir.file("does-not-exist")).find("cannot open"), std::string::npos);
  EXPECT_NE(error_of(dir.path()).find("not a regular file"), std::string::npos);
}

TEST(Safetensors, RandomByteFlipsNeverCrash) {
  // A deterministic stand-in for the libFuzzer target: every mutation must parse or throw skv::Error,
  // and whatever parses must lie inside the file.
  skv_test::TempDir dir;
  const std::string good = dir.file("g.safetensors");
  skv::io::write_safetensors(good, {{"w", DType::BF16, {3, 5}, ramp(15, 0.3f)}, {"x", DType::F32, {2}, ramp(2, 1.0f)}});
  const auto bytes = skv_test::read_bytes(good);
  std::mt19937 rng(123);
  int accepted = 0;
  for (int it = 0; it < 4000; ++it) {
    auto m = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      const std::size_t at = rng() % m.size();
      m[at] = static_cast<std::uint8_t>(rng() % 3 == 0 ? "0123456789[]{},:\"-"[rng() % 18] : rng() & 0xff);
    }
    try {
      const auto h = skv::io::parse_safetensors_header(m.data(), m.size(), "mutant");
      for (const auto& t : h.tensors) ASSERT_LE(h.data_offset + t.end, m.size());
      ++accepted;
    } catch (const skv::Error& e) {
      ASSERT_EQ(std::string(e.what()).rfind("skv: mutant", 0), 0u) << e.what();
    }
  }
  EXPECT_GT(accepted, 0);  // flips inside the data keep the file valid
  EXPECT_LT(accepted, 4000);
}

TEST(Checkpoint, ShardedIndex) {
  skv_test::TempDir dir;
  skv::io::write_safetensors(dir.file("model-00001-of-00002.safetensors"), {{"a", DType::F32, {2}, {1, 2}}});
  skv::io::write_safetensors(dir.file("model-00002-of-00002.safetensors"),
                             {{"b", DType::F16, {3}, {3, 4, 5}}, {"c", DType::F32, {1}, {6}}});
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"metadata":{"total_size":22},"weight_map":{"a":"model-00001-of-00002.safetensors",
             "b":"model-00002-of-00002.safetensors","c":"model-00002-of-00002.safetensors"}})";
  skv::io::Checkpoint ck(dir.path());
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(ck.files().size(), 2u);
  EXPECT_EQ(ck.tensor("b").to_float(), (std::vector<float>{3, 4, 5}));
  EXPECT_EQ(skv::io::Checkpoint(dir.file("model.safetensors.index.json")).tensor("c").to_float()[0], 6.0f);
  EXPECT_EQ(skv::io::Checkpoint(dir.file("model-00001-of-00002.safetensors")).names().size(), 1u);
  EXPECT_THROW(ck.tensor("d"), skv::Error);

  // An index naming a tensor its shard does not hold, or a file outside the folder.
  std::ofstream(dir.file("model.safetensors.index.json"))
      << R"({"weight_map":{"a":"model-00001-of-00002.safetensors","zz":"model-00001-of-00002.safetensors"}})";
  try {
    skv::io::Checkpoint bad(dir.path());
    FAIL();
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor 'zz'"), std::string::npos) << e.what();
  }
  std::ofstream(dir.file("model.safetensors.index.json")) << R"({"weight_map":{"a":"../x.safetensors"}})";
  EXPECT_THROW(skv::io::Checkpoint{dir.path()}, skv::Error);
  std::ofstream(dir.file("model.safetensors.index.json")) << R"({"weight_map":[1]})";
  EXPECT_THROW(skv::io::Checkpoint{dir.path()}, skv::Error);
  skv_test::TempDir empty;
  EXPECT_THROW(skv::io::Checkpoint{empty.path()}, skv::Error);
}

TEST(ModelConfig, ReadsHeadGeometry) {
  using skv::io::parse_model_config;
  const auto llama = parse_model_config(nlohmann::json::parse(R"({"model_type":"llama","num_hidden_layers":32,
      "num_attention_heads":32,"num_key_value_heads":8,"hidden_size":4096})"), "c");
  EXPECT_EQ(llama.num_layers, 32);
  EXPECT_EQ(llama.num_kv_heads, 8);
  EXPECT_EQ(llama.head_dim, 128);
  const auto qwen3 = parse_model_config(nlohmann::json::parse(R"({"num_attention_heads":32,"num_key_value_heads":8,
      "hidden_size":2560,"head_dim":128})"), "c");
  EXPECT_EQ(qwen3.head_dim, 128);  // explicit head_dim wins over hidden / heads
  const auto gpt2 = parse_model_config(nlohmann::json::parse(R"({"n_layer":12,"n_head":12,"n_embd":768})"), "c");
  EXPECT_EQ(gpt2.num_kv_heads, 12);
  EXPECT_EQ(gpt2.head_dim, 64);
  const auto vlm = parse_model_config(nlohmann::json::parse(R"({"text_config":{"num_attention_heads":8,"hidden_size":512}})"), "c");
  EXPECT_EQ(vlm.head_dim, 64);
  EXPECT_THROW(parse_model_config(nlohmann::json::parse(R"({"hidden_size":512})"), "c"), skv::Error);
  EXPECT_THROW(parse_model_config(nlohmann::json::parse(R"({"num_attention_heads":12,"num_key_value_heads":5,"hidden_size":768})"), "c"),
               skv::Error);
  EXPECT_THROW(parse_model_config(nlohmann::json::parse(R"({"num_attention_heads":-1})"), "c"), skv::Error);
  skv_test::TempDir dir;
  std::ofstream(dir.file("config.json")) << "{not json";
  EXPECT_THROW(skv::io::read_model_config(dir.path()), skv::Error);
}

// A crafted config.json may nest text_config thousands of levels deep: an error, not a stack overflow.
TEST(ModelConfig, DeeplyNestedTextConfigIsAnError) {
  skv_test::TempDir dir;
  const int depth = 200000;
  std::string text;
  for (int i = 0; i < depth; ++i) text += "{\"text_config\":";
  text += "{\"num_attention_heads\":8,\"hidden_size\":512}";
  text += std::string(depth, '}');
  std::ofstream(dir.file("config.json")) << text;
  try {
    skv::io::read_model_config(dir.path());
    FAIL() << "accepted";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("text_config nested more than 4 levels deep"), std::string::npos) << e.what();
  }
  // real multimodal configs nest it once or twice
  const auto two = skv::io::parse_model_config(
      nlohmann::json::parse(R"({"text_config":{"text_config":{"num_attention_heads":8,"hidden_size":512}}})"), "c");
  EXPECT_EQ(two.head_dim, 64);
}

// A FIFO (or any other non-regular file) given as an input is an error; opening it must not block.
TEST(Safetensors, FifosAndFoldersAreErrorsWithoutBlocking) {
  skv_test::TempDir dir;
  for (const char* name : {"pipe.safetensors", "config.json", "model.safetensors.index.json"})
    ASSERT_EQ(::mkfifo(dir.file(name).c_str(), 0600), 0) << name;
  EXPECT_THROW(skv::io::SafetensorsFile{dir.file("pipe.safetensors")}, skv::Error);
  EXPECT_THROW(skv::io::Checkpoint{dir.file("pipe.safetensors")}, skv::Error);
  EXPECT_THROW(skv::io::read_model_config(dir.file("config.json")), skv::Error);
  EXPECT_THROW(skv::io::read_model_config(dir.path()), skv::Error);
  EXPECT_THROW(skv::io::Checkpoint{dir.file("model.safetensors.index.json")}, skv::Error);
  try {
    skv::io::SafetensorsFile f(dir.file("pipe.safetensors"));
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("not a regular file"), std::string::npos) << e.what();
  }
  EXPECT_THROW(skv::io::SafetensorsFile{dir.path()}, skv::Error);
}

// nlohmann::json keeps the last of two equal keys: a header naming a tensor twice must be rejected.
TEST(Safetensors, ATensorNamedTwiceIsAnError) {
  skv_test::TempDir dir;
  const std::string p = dir.file("dup.safetensors");
  write_raw(p, R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"w":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8);
  try {
    skv::io::SafetensorsFile f(p);
    FAIL() << "accepted";
  } catch (const skv::Error& e) {
    EXPECT_NE(std::string(e.what()).find("names 'w' twice"), std::string::npos) << e.what();
  }
  // the same name inside __metadata__ and as a tensor's field is fine
  write_raw(p, R"({"__metadata__":{"w":"x"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 4);
  EXPECT_NO_THROW(skv::io::SafetensorsFile{p});
}

// Parser messages quote the input: bytes that are not printable ASCII are escaped, never echoed raw.
TEST(Safetensors, ErrorsEscapeInvalidUtf8) {
  skv_test::TempDir dir;
  const std::string p = dir.file("bad.safetensors");
  write_raw(p, std::string("{\"w\xff\xfe\x01\":1}"), 0);
  std::ofstream(dir.file("config.json")) << std::string("{\"a\":\"\xc3\x28\x07\"}");
  for (int which = 0; which < 2; ++which) {
    try {
      if (which == 0)
        skv::io::SafetensorsFile f(p);
      else
        skv::io::read_model_config(dir.path());
      FAIL() << "accepted " << which;
    } catch (const skv::Error& e) {
      const std::string what = e.what();
      for (const char ch : what) ASSERT_TRUE(ch >= 0x20 && ch < 0x7f) << which << ": " << what;
      EXPECT_NE(what.find("\\x"), std::string::npos) << what;
    }
  }
}

}  // namespace
