#include <cstdio>
int main() { std::puts("demo: under construction"); return 0; }
