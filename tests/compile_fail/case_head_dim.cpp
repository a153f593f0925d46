// expect: HeadDim must be a multiple of 8
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::KVCache<4, 2, 96> c(1, 1);
#else
skv::KVCache<4, 2, 100> c(1, 1);
#endif
int main() { return 0; }
