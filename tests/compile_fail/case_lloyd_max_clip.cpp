// expect: ClipValues and Scheme::LloydMax values do not combine
#include <skv/skv.hpp>
using KQ = skv::Quantizer<4, 32, skv::Axis::Channel>;
using VQ = skv::Quantizer<2, 64, skv::Axis::Token, skv::Scheme::LloydMax>;
#ifdef SKV_OK
using Opts = skv::Options<skv::ClipKeys>;
#else
using Opts = skv::Options<skv::ClipKeys, skv::ClipValues>;
#endif
skv::BasicKVCache<KQ, VQ, 128, 64, 0, Opts> cache(1, 64);
int main() { return 0; }
