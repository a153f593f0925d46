// expect: ScaleT must be skv::fp16, skv::bf16 or float
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::Quantizer<4, 32, skv::Axis::Token, skv::Scheme::Asymmetric, skv::bf16> q;
#else
skv::Quantizer<4, 32, skv::Axis::Token, skv::Scheme::Asymmetric, double> q;
#endif
int main() { return 0; }
