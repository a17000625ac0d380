// LeNet's conv2 block under K MC-dropout masks, fused for the CPU. For every input n and
// MC sample k it computes what `jal.scoring.conv2_block_xla` computes with XLA ops:
//
//   out[n, k, o*16 + w] = m2[n, k, o] * relu(b2[o] + max_{p in window w}
//                           sum_{c in S[n, k]} P[n, c, o, p]),
//   P[n, c, o, p] = sum_{i, j} W2[c, o, i, j] * z[n, c, row(p) + i, col(p) + j],
//
// with z [N, 32, 12, 12] conv1's pooled, rectified output (shared by all MC samples), W2
// already multiplied by the dropout scale 1 / (1 - rate), S[n, k] the conv1 channels the
// dropout mask keeps (bit c of the word bits[n, k]), P the per-channel partial convolutions
// (8x8 positions) and w one of the 4x4 max-pool windows.
//
// Two things make it fast:
// * Locality. One output channel's partials (8 KB) are computed and consumed at once, so
//   the working set (partials, their subset-sum table of 32 KB, the padded input of 24 KB)
//   stays in L1 and L2; XLA writes all partials (512 KB per input) and the mask products
//   to memory, which bounds its two short contractions to about 20 GFLOP/s.
// * Masks are bits. The mask contraction is a sum over a subset of 32 channels for each of
//   K subsets. Split the channels into 8 groups of 4 and tabulate all 16 subset sums of
//   each group once (one vector add per entry); each MC sample is then 8 table lookups
//   instead of 32 multiply-adds (the "four Russians" trick). Per input and K = 32 this
//   takes the contraction from 4.2 M multiply-adds to about 1.5 M adds (0.5 M to build
//   the tables, 1 M for the lookups).
//
// Vectors: 8 lanes, GCC/Clang vector extensions, lowered to AVX2 (or whatever the target
// has). The partials run along the 8 output columns; max-pool is a lane-wise max of row
// pairs and one in-register shuffle.

#include "common.h"

namespace {

using namespace jal;

constexpr int kWindows = 16;  // 4x4 max-pool windows
constexpr int kGroupBits = 4, kGroups = kIn / kGroupBits, kSubsets = 1 << kGroupBits;

// One input: z [32, 12, 12], w2 [32, 64, 25], b2 [64], bits [K], m2 [K, 64] -> out [K, 1024].
void conv2_block(const float* z, const float* w2, const float* b2, const uint32_t* bits, const float* m2, float* out,
                 int64_t k_count) {
  alignas(64) float padded[kIn][kSide][kRowPad] = {};
  for (int c = 0; c < kIn; ++c)
    for (int r = 0; r < kSide; ++r) std::copy_n(z + (c * kSide + r) * kSide, kSide, padded[c][r]);

  alignas(64) float partials[kIn][kConv * kConv];           // P[n, :, o, :] for one o
  alignas(64) float table[kGroups][kSubsets][kConv * kConv];  // subset sums of each group's partials
  for (int o = 0; o < kOut; ++o) {
    for (int c = 0; c < kIn; ++c) {
      const float* w = w2 + (c * kOut + o) * kTap * kTap;
      const float* zc = &padded[c][0][0];  // indexing `padded` directly here compiles to slower code (GCC 12)
      v8 acc[kConv] = {};
      for (int i = 0; i < kTap; ++i)
        for (int j = 0; j < kTap; ++j) {
          const v8 tap = splat(w[i * kTap + j]);
          for (int r = 0; r < kConv; ++r) acc[r] += tap * load8(zc + (r + i) * kRowPad + j);
        }
      for (int r = 0; r < kConv; ++r) store8(&partials[c][r * kConv], acc[r]);
    }

    for (int g = 0; g < kGroups; ++g) {
      for (int r = 0; r < kConv; ++r) store8(&table[g][0][r * kConv], v8{});
      for (int s = 1; s < kSubsets; ++s) {  // s = (s without its lowest bit) + that bit's channel
        const float* rest = table[g][s & (s - 1)];
        const float* channel = partials[kGroupBits * g + __builtin_ctz(s)];
        for (int r = 0; r < kConv; ++r)
          store8(&table[g][s][r * kConv], load8(rest + r * kConv) + load8(channel + r * kConv));
      }
    }

    const v8 bias = splat(b2[o]);
    for (int64_t k = 0; k < k_count; ++k) {
      const uint32_t word = bits[k];
      v8 rows[kConv] = {};
      for (int g = 0; g < kGroups; ++g) {
        const float* sum = table[g][(word >> (kGroupBits * g)) & (kSubsets - 1)];
        for (int r = 0; r < kConv; ++r) rows[r] += load8(sum + r * kConv);
      }
      v8 pooled[kConv / 2];  // lanes 0, 2, 4, 6 hold window row i's four maxima
      for (int i = 0; i < kConv / 2; ++i) {
        const v8 pair = vmax(rows[2 * i], rows[2 * i + 1]);
        pooled[i] = vmax(pair, swap_pairs(pair));
      }
      const v8 mask = splat(m2[k * kOut + o]);
      for (int h = 0; h < 2; ++h) {  // windows 8h .. 8h + 7
        const v8 v = even_lanes(pooled[2 * h], pooled[2 * h + 1]);
        store8(out + (k * kOut + o) * kWindows + 8 * h, vmax(v + bias, v8{}) * mask);
      }
    }
  }
}

ffi::Error mc_conv2(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> z, ffi::Buffer<ffi::F32> w2, ffi::Buffer<ffi::F32> b2,
                    ffi::Buffer<ffi::U32> bits, ffi::Buffer<ffi::F32> m2, ffi::ResultBuffer<ffi::F32> out) {
  const auto zd = z.dimensions(), wd = w2.dimensions(), bd = bits.dimensions(), md = m2.dimensions();
  if (zd.size() != 4 || zd[1] != kIn || zd[2] != kSide || zd[3] != kSide)
    return ffi::Error::InvalidArgument("mc_conv2: z must be [N, 32, 12, 12]");
  if (wd.size() != 3 || wd[0] != kIn || wd[1] != kOut || wd[2] != kTap * kTap || b2.element_count() != kOut)
    return ffi::Error::InvalidArgument("mc_conv2: w2 must be [32, 64, 25] and b2 [64]");
  const int64_t n_count = zd[0];
  if (bd.size() != 2 || bd[0] != n_count || md.size() != 3 || md[0] != n_count || md[1] != bd[1] || md[2] != kOut)
    return ffi::Error::InvalidArgument("mc_conv2: bits must be [N, K] and m2 [N, K, 64]");
  const int64_t k_count = bd[1];
  const auto od = out->dimensions();
  if (od.size() != 3 || od[0] != n_count || od[1] != k_count || od[2] != kOut * kWindows)
    return ffi::Error::InvalidArgument("mc_conv2: out must be [N, K, 1024]");
  const float *zp = z.typed_data(), *wp = w2.typed_data(), *bp = b2.typed_data(), *mp = m2.typed_data();
  const uint32_t* bitp = bits.typed_data();
  float* op = out->typed_data();
  parallel_for(pool, n_count, [=](int64_t n) {
    conv2_block(zp + n * kIn * kSide * kSide, wp, bp, bitp + n * k_count, mp + n * k_count * kOut,
                op + n * k_count * kOut * kWindows, k_count);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JalMcConv2, mc_conv2,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // z
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w2, scaled
                                  .Arg<ffi::Buffer<ffi::F32>>()  // b2
                                  .Arg<ffi::Buffer<ffi::U32>>()  // conv1 mask bits
                                  .Arg<ffi::Buffer<ffi::F32>>()  // conv2 masks
                                  .Ret<ffi::Buffer<ffi::F32>>());
