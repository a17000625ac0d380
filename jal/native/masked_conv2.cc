// LeNet's conv2 in training, under its two Dropout2d masks, forward and backward, for the
// CPU. For every sample n it computes
//
//   y[n, o, r, s] = [m2[n, o] != 0] * sum_c sum_{i, j} W[o, c, i, j] * m1[n, c] * a[c, n, r + i, s + j]
//
// with a [32, N, 12, 12] conv1's pooled, rectified output (channel-major over the batch,
// the layout conv1's matmul produces), m1 [N, 32] and m2 [N, 64] the dropout masks before
// and after conv2 (one value per sample and channel), W [64, 32, 5, 5] and y [N, 64, 8, 8]:
// conv2 without bias, of the masked input, on the output channels the conv2 mask keeps.
// The others are multiplied by zero after max-pool and ReLU downstream, so they need not
// be computed, and their gradient is zero.
//
// Why: with rate 1/2 a sample keeps about 16 of 32 input and 32 of 64 output channels, so
// the forward, the weight gradient and the input gradient each need about a quarter of a
// dense conv2's multiply-adds. XLA's im2col matmuls cannot skip them, and they write and
// read a 13 MB patch matrix per batch of 64; here a sample's kept input (9 KB) stays in L1.
//
// The forward and the input gradient run along the 8 columns of an output row (8 lanes),
// the weight gradient along 8 kept output channels at a time.

#include <vector>

#include "common.h"

namespace {

using namespace jal;

constexpr int kTaps = kTap * kTap, kPositions = kConv * kConv;

// The channels a mask keeps, in increasing order.
struct Kept {
  int count = 0;
  int index[kOut];
  Kept(const float* mask, int size) {
    for (int c = 0; c < size; ++c)
      if (mask[c] != 0.0f) index[count++] = c;
  }
};

// x[k][r][s] = m1[c] * a[c, n, r, s] for the k-th kept input channel c, rows padded with
// zeros to kRowPad; a points at a[0, n] and channel_stride is N * 144.
void gather_input(const float* a, int64_t channel_stride, const float* m1, const Kept& in, float (*x)[kSide][kRowPad]) {
  for (int k = 0; k < in.count; ++k) {
    const int c = in.index[k];
    for (int r = 0; r < kSide; ++r) {
      for (int s = 0; s < kSide; ++s) x[k][r][s] = m1[c] * a[c * channel_stride + r * kSide + s];
      std::fill(x[k][r] + kSide, x[k][r] + kRowPad, 0.0f);
    }
  }
}

// One sample: a, m1 [32], w [64, 32, 25], m2 [64] -> y [64, 8, 8].
void forward(const float* a, int64_t channel_stride, const float* m1, const float* w, const float* m2, float* y) {
  const Kept in(m1, kIn), out(m2, kOut);
  alignas(64) float x[kIn][kSide][kRowPad];
  gather_input(a, channel_stride, m1, in, x);
  std::fill_n(y, kOut * kPositions, 0.0f);
  for (int ko = 0; ko < out.count; ++ko) {
    const int o = out.index[ko];
    v8 acc[kConv] = {};
    for (int k = 0; k < in.count; ++k) {
      const float* taps = w + (o * kIn + in.index[k]) * kTaps;
      const float* xk = &x[k][0][0];
      for (int i = 0; i < kTap; ++i)
        for (int j = 0; j < kTap; ++j) {
          const v8 tap = splat(taps[i * kTap + j]);
          for (int r = 0; r < kConv; ++r) acc[r] += tap * load8(xk + (r + i) * kRowPad + j);
        }
    }
    for (int r = 0; r < kConv; ++r) store8(y + (o * kConv + r) * kConv, acc[r]);
  }
}

// One sample's gradients from g [64, 8, 8] (the gradient of y): writes da (laid out as a)
// and adds the weight gradient to dw [64, 32, 25]. w_t is W as [32, 25, 64].
void backward(const float* a, int64_t channel_stride, const float* m1, const float* w_t, const float* m2, const float* g, float* da,
              float* dw) {
  const Kept in(m1, kIn), out(m2, kOut);
  alignas(64) float x[kIn][kSide][kRowPad];
  gather_input(a, channel_stride, m1, in, x);

  // Input gradient, in scatter form: each tap (i, j) adds sum_o W[o, c, i, j] * g[o] to the
  // 8x8 window of dx at (i, j). Channels the mask drops get zero.
  for (int c = 0; c < kIn; ++c) std::fill_n(da + c * channel_stride, kSide * kSide, 0.0f);
  for (int k = 0; k < in.count; ++k) {
    const int c = in.index[k];
    alignas(64) float dx[kSide][kRowPad] = {};
    for (int t = 0; t < kTaps; ++t) {
      const float* taps = w_t + (c * kTaps + t) * kOut;
      v8 sum[kConv] = {};
      for (int ko = 0; ko < out.count; ++ko) {
        const int o = out.index[ko];
        const v8 tap = splat(taps[o]);
        for (int r = 0; r < kConv; ++r) sum[r] += tap * load8(g + (o * kConv + r) * kConv);
      }
      const int i = t / kTap, j = t % kTap;
      for (int r = 0; r < kConv; ++r) store8(&dx[r + i][j], load8(&dx[r + i][j]) + sum[r]);
    }
    for (int r = 0; r < kSide; ++r)
      for (int s = 0; s < kSide; ++s) da[c * channel_stride + r * kSide + s] = m1[c] * dx[r][s];
  }

  // Weight gradient, 8 kept output channels per vector: g transposed to [position, kept
  // channel], zero-padded to 64 channels so that groups can always go in pairs.
  alignas(64) float gt[kPositions][kOut];
  for (int p = 0; p < kPositions; ++p)
    for (int ko = 0; ko < kOut; ++ko) gt[p][ko] = ko < out.count ? g[out.index[ko] * kPositions + p] : 0.0f;
  const int groups = (out.count + 7) / 8;
  for (int k = 0; k < in.count; ++k) {
    const float* xk = &x[k][0][0];
    for (int group = 0; group < groups; group += 2) {
      for (int i = 0; i < kTap; ++i) {
        v8 acc[2][kTap] = {};  // [group pair][j]: ten independent sums hide the FMA latency
        for (int r = 0; r < kConv; ++r)
          for (int s = 0; s < kConv; ++s) {
            const v8 g0 = load8(&gt[r * kConv + s][8 * group]), g1 = load8(&gt[r * kConv + s][8 * group + 8]);
            for (int j = 0; j < kTap; ++j) {
              const v8 xv = splat(xk[(r + i) * kRowPad + s + j]);
              acc[0][j] += xv * g0;
              acc[1][j] += xv * g1;
            }
          }
        for (int half = 0; half < 2; ++half)
          for (int lane = 0; lane < 8; ++lane) {
            const int ko = 8 * (group + half) + lane;
            if (ko >= out.count) break;
            float* dw_oc = dw + (out.index[ko] * kIn + in.index[k]) * kTaps + i * kTap;
            for (int j = 0; j < kTap; ++j) dw_oc[j] += acc[half][j][lane];
          }
      }
    }
  }
}

bool shaped(const ffi::Span<const int64_t>& dims, std::initializer_list<int64_t> expected) {
  return dims.size() == expected.size() && std::equal(expected.begin(), expected.end(), dims.begin());
}

ffi::Error check_inputs(const ffi::Buffer<ffi::F32>& a, const ffi::Buffer<ffi::F32>& m1, const ffi::Buffer<ffi::F32>& w,
                        const ffi::Buffer<ffi::F32>& m2) {
  const int64_t n = a.dimensions().size() == 4 ? a.dimensions()[1] : -1;
  if (!shaped(a.dimensions(), {kIn, n, kSide, kSide}) || !shaped(m1.dimensions(), {n, kIn}) ||
      !shaped(m2.dimensions(), {n, kOut}) || !shaped(w.dimensions(), {kOut, kIn, kTaps}))
    return ffi::Error::InvalidArgument("masked_conv2: expected a [32, N, 12, 12], m1 [N, 32], w [64, 32, 25], m2 [N, 64]");
  return ffi::Error::Success();
}

ffi::Error masked_conv2(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> m1,
                        ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> m2, ffi::ResultBuffer<ffi::F32> y) {
  if (auto error = check_inputs(a, m1, w, m2); error.failure()) return error;
  const int64_t n_count = a.dimensions()[1], stride = n_count * kSide * kSide;
  if (!shaped(y->dimensions(), {n_count, kOut, kConv, kConv}))
    return ffi::Error::InvalidArgument("masked_conv2: y must be [N, 64, 8, 8]");
  const float *ap = a.typed_data(), *m1p = m1.typed_data(), *wp = w.typed_data(), *m2p = m2.typed_data();
  float* yp = y->typed_data();
  parallel_for(pool, n_count, [=](int64_t n) {
    forward(ap + n * kSide * kSide, stride, m1p + n * kIn, wp, m2p + n * kOut, yp + n * kOut * kPositions);
  });
  return ffi::Error::Success();
}

ffi::Error masked_conv2_grad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> m1,
                             ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> w_t, ffi::Buffer<ffi::F32> m2,
                             ffi::Buffer<ffi::F32> g, ffi::ResultBuffer<ffi::F32> da, ffi::ResultBuffer<ffi::F32> dw) {
  if (auto error = check_inputs(a, m1, w, m2); error.failure()) return error;
  const int64_t n_count = a.dimensions()[1], stride = n_count * kSide * kSide;
  if (!shaped(w_t.dimensions(), {kIn, kTaps, kOut}) || !shaped(g.dimensions(), {n_count, kOut, kConv, kConv}) ||
      !shaped(da->dimensions(), {kIn, n_count, kSide, kSide}) || !shaped(dw->dimensions(), {kOut, kIn, kTaps}))
    return ffi::Error::InvalidArgument("masked_conv2_grad: expected w_t [32, 25, 64], g [N, 64, 8, 8]");
  const float *ap = a.typed_data(), *m1p = m1.typed_data(), *wtp = w_t.typed_data(), *m2p = m2.typed_data(),
              *gp = g.typed_data();
  float *dap = da->typed_data(), *dwp = dw->typed_data();
  // Samples go in a fixed number of blocks, each with its own weight-gradient sum (no
  // sharing between threads), added in block order: the result depends neither on the
  // number of threads nor on which thread ran which block.
  constexpr int64_t kWeights = kOut * kIn * kTaps, kBlocks = 8;
  const int64_t blocks = std::max<int64_t>(1, std::min(n_count, kBlocks));
  std::vector<float> sums(blocks * kWeights, 0.0f);
  float* sp = sums.data();
  parallel_for(pool, blocks, [=](int64_t b) {
    for (int64_t n = b * n_count / blocks; n < (b + 1) * n_count / blocks; ++n)
      backward(ap + n * kSide * kSide, stride, m1p + n * kIn, wtp, m2p + n * kOut, gp + n * kOut * kPositions,
               dap + n * kSide * kSide, sp + b * kWeights);
  });
  std::fill_n(dwp, kWeights, 0.0f);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t q = 0; q < kWeights; ++q) dwp[q] += sp[b * kWeights + q];
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JalMaskedConv2, masked_conv2,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w [64, 32, 25]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m2
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JalMaskedConv2Grad, masked_conv2_grad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // a
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m1
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w [64, 32, 25]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w [32, 25, 64]
                                  .Arg<ffi::Buffer<ffi::F32>>()  // m2
                                  .Arg<ffi::Buffer<ffi::F32>>()  // g
                                  .Ret<ffi::Buffer<ffi::F32>>()   // da
                                  .Ret<ffi::Buffer<ffi::F32>>());  // dw
