// expect: every option must be skv::RotateKeys
#include <skv/skv.hpp>
#ifdef SKV_OK
skv::KVCache<4, 2, 128, skv::Sinks<4>> c(1, 1);
#else
skv::KVCache<4, 2, 128, int> c(1, 1);
#endif
int main() { return 0; }
