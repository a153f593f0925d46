// expect: Bits must be between 1 and 8
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::Quantizer<8, 32, skv::Axis::Channel> q;
#else
skv::Quantizer<9, 32, skv::Axis::Channel> q;
#endif
int main() { return 0; }
