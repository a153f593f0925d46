// expect: PageSize must be a power of two
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::BasicKVCache<skv::Quantizer<4, 16, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 32> c(1, 1);
#else
skv::BasicKVCache<skv::Quantizer<4, 16, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 48> c(1, 1);
#endif
int main() { return 0; }
