// expect: Scheme::LloydMax is for values: Bits 1 to 4, Axis::Token groups
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::Quantizer<4, 32, skv::Axis::Token, skv::Scheme::LloydMax> q;
#else
skv::Quantizer<4, 32, skv::Axis::Channel, skv::Scheme::LloydMax> q;
#endif
int main() { return 0; }
