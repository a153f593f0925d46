// expect: Residual must be a multiple
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 64, 64> c(1, 1);
#else
skv::BasicKVCache<skv::Quantizer<4, 32, skv::Axis::Channel>, skv::Quantizer<2, 64, skv::Axis::Token>, 128, 64, 40> c(1, 1);
#endif
int main() { return 0; }
