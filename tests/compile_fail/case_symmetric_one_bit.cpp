// expect: Symmetric needs Bits >= 2
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::Quantizer<2, 32, skv::Axis::Token, skv::Scheme::Symmetric> q;
#else
skv::Quantizer<1, 32, skv::Axis::Token, skv::Scheme::Symmetric> q;
#endif
int main() { return 0; }
