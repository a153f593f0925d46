// expect: PageSize must be a multiple of every Channel-axis GroupSize
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::BasicKVCache<skv::Quantizer<4, 64, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 64> c(1, 1);
#else
skv::BasicKVCache<skv::Quantizer<4, 128, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 64> c(1, 1);
#endif
int main() { return 0; }
