// expect: Bits must be between 1 and 8
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::KVCache<1, 1> c(1, 1);
#else
skv::KVCache<0, 2> c(1, 1);
#endif
int main() { return 0; }
