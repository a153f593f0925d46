// expect: PreRopeKeys and RotateKeys exclude each other
#include <skv/skv.hpp>
#ifdef SKV_OK
using Opts = skv::Options<skv::PreRopeKeys, skv::RotateValues, skv::Int8Ring>;
#else
using Opts = skv::Options<skv::PreRopeKeys, skv::RotateKeys, skv::Int8Ring>;
#endif
skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 64, 0, Opts>
    cache(1, 64);
int main() { return 0; }
