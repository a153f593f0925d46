// expect: RotateValues needs a power-of-two HeadDim
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::KVCache<4, 2, 128, skv::RotateValues> c(1, 1);
#else
skv::KVCache<4, 2, 96, skv::RotateValues> c(1, 1);
#endif
int main() { return 0; }
