// expect: GroupSize must be a power of two
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::Quantizer<4, 32, skv::Axis::Token> q;
#else
skv::Quantizer<4, 24, skv::Axis::Token> q;
#endif
int main() { return 0; }
