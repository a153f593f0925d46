// skv/skv.hpp: the umbrella header. Host-safe: it never includes a .cuh (see skv/gpu/ for those).
#pragma once

#include <skv/config.hpp>
#include <skv/error.hpp>
#include <skv/numeric/half.hpp>
#include <skv/numeric/pack.hpp>
#include <skv/quant/quantizer.hpp>
#include <skv/quant/rotation.hpp>
#include <skv/cache/options.hpp>
#include <skv/cache/layout.hpp>
#include <skv/cache/view.hpp>
#include <skv/cache/quantize_block.hpp>
#include <skv/cache/quantize_block_fast.hpp>
#include <skv/cache/append.hpp>
#include <skv/cache/kv_cache.hpp>
#include <skv/attention/softmax.hpp>
#include <skv/attention/options.hpp>
#include <skv/attention/reference.hpp>
#include <skv/attention/decode.hpp>
#include <skv/attention/prefill.hpp>
