"""Register-blocked inner loops of the native convolution, written out as C++ source.

GCC keeps an array of `__m512` accumulators in memory (it stores every one back to
the stack on each step of the reduction loop, measured: 47 GFLOP/s against 99 with
named variables for the same 16 x 16 block), so each block size is emitted with
one named variable per accumulator. `source()` is what `cnnjax.native.build`
compiles together with ``conv.cc``.
"""

from __future__ import annotations

# (output vectors of 16 channels, output pixels) per forward block: at most 28 of the
# 32 vector registers hold accumulators, the rest the kernel row and the broadcast.
FORWARD_BLOCKS = {1: (16, 8, 4, 2, 1), 2: (12, 8, 4, 2, 1), 4: (6, 4, 2, 1)}
# Input channels per kernel-gradient block, by output vectors of 16 channels: at most 24
# accumulators, so that the broadcasts and the dy row vectors fit beside them.
KERNEL_GRAD_BLOCKS = {1: (16, 8, 4, 2, 1), 2: (12, 8, 4, 2, 1), 4: (6, 4, 2, 1)}


def _forward_block(ob: int, wb: int) -> str:
  acc = [[f"a{p}_{o}" for o in range(ob)] for p in range(wb)]
  lines = [
      f"static void forward_block_{ob}_{wb}(const float* __restrict xs, int64_t xoff, "
      "const float* __restrict k, float* __restrict yrow, int64_t row_stride, "
      "int64_t pixel_step, int64_t cin, int64_t cout, int64_t i0, int64_t i1, int64_t j0, "
      "int64_t j1, int64_t kw, int64_t w0, int64_t o0) {"]
  lines += [f"  __m512 {a} = _mm512_setzero_ps();" for row in acc for a in row]
  lines += [
      "  for (int64_t i = i0; i < i1; ++i) {",
      "    for (int64_t j = j0; j < j1; ++j) {",
      "      const float* x = xs + (xoff + i * row_stride + w0 * pixel_step + j * cin);",
      "      const float* kk = k + (i * kw + j) * cin * cout + o0;",
      "      for (int64_t c = 0; c < cin; ++c, ++x, kk += cout) {"]
  lines += [f"        const __m512 w{o} = _mm512_loadu_ps(kk + {16 * o});" for o in range(ob)]
  for p in range(wb):
    lines.append(f"        {{ const __m512 v = _mm512_set1_ps(x[{p} * pixel_step]);")
    lines += [f"          {acc[p][o]} = _mm512_fmadd_ps(v, w{o}, {acc[p][o]});" for o in range(ob)]
    lines.append("        }")
  lines += ["      }", "    }", "  }"]
  for p in range(wb):
    lines += [f"  _mm512_storeu_ps(yrow + (w0 + {p}) * cout + o0 + {16 * o}, {acc[p][o]});"
              for o in range(ob)]
  lines.append("}")
  return "\n".join(lines)


def _kernel_grad_block(ob: int, cb: int) -> str:
  acc = [[f"a{c}_{o}" for o in range(ob)] for c in range(cb)]
  lines = [
      f"static void kernel_grad_block_{ob}_{cb}(const float* __restrict x, "
      "const float* __restrict g, float* __restrict dk, int64_t rows, int64_t npix, "
      "int64_t pixel_step, int64_t row_step, int64_t g_row_step, int64_t cout) {"]
  lines += [f"  __m512 {acc[c][o]} = _mm512_loadu_ps(dk + {c} * cout + {16 * o});"
            for c in range(cb) for o in range(ob)]
  lines += ["  for (int64_t r = 0; r < rows; ++r) {",
            "   const float* xr = x + r * row_step;",
            "   const float* gr = g + r * g_row_step;",
            "   for (int64_t p = 0; p < npix; ++p, xr += pixel_step, gr += cout) {"]
  lines += [f"    const __m512 g{o} = _mm512_loadu_ps(gr + {16 * o});" for o in range(ob)]
  for c in range(cb):
    lines.append(f"    {{ const __m512 v = _mm512_set1_ps(xr[{c}]);")
    lines += [f"      {acc[c][o]} = _mm512_fmadd_ps(v, g{o}, {acc[c][o]});" for o in range(ob)]
    lines.append("    }")
  lines.append("   }")
  lines.append("  }")
  lines += [f"  _mm512_storeu_ps(dk + {c} * cout + {16 * o}, {acc[c][o]});"
            for c in range(cb) for o in range(ob)]
  lines.append("}")
  return "\n".join(lines)


def _width_table(name: str, blocks: dict[int, tuple[int, ...]]) -> list[str]:
  """Rows for 1, 2 and 4 output vectors: the block sizes, largest first, 0-padded to 6."""
  rows = ["  {" + ", ".join(map(str, [*blocks[ob]] + [0] * (6 - len(blocks[ob])))) + "},"
          for ob in (1, 2, 4)]
  return [f"static const int64_t {name}[][6] = {{", *rows, "};"]


def _dispatcher(kind: str, size: str, params: str, args: str,
                blocks: dict[int, tuple[int, ...]]) -> list[str]:
  """``kind(ob, size, params...)``: calls the generated block for (ob, size)."""
  lines = [f"static void {kind}(int64_t ob, int64_t {size}, {params}) {{"]
  lines += [f"  if (ob == {ob} && {size} == {n}) return {kind}_{ob}_{n}({args});"
            for ob, sizes in blocks.items() for n in sizes]
  lines.append("}")
  return lines


def _dispatch() -> str:
  lines = _dispatcher(
      "forward_block", "wb",
      "const float* xs, int64_t xoff, const float* k, float* yrow, int64_t row_stride, "
      "int64_t pixel_step, int64_t cin, int64_t cout, int64_t i0, int64_t i1, int64_t j0, "
      "int64_t j1, int64_t kw, int64_t w0, int64_t o0",
      "xs, xoff, k, yrow, row_stride, pixel_step, cin, cout, i0, i1, j0, j1, kw, w0, o0",
      FORWARD_BLOCKS)
  lines += _width_table("kForwardWidths", FORWARD_BLOCKS)
  lines += _dispatcher(
      "kernel_grad_block", "cb",
      "const float* x, const float* g, float* dk, int64_t rows, int64_t npix, "
      "int64_t pixel_step, int64_t row_step, int64_t g_row_step, int64_t cout",
      "x, g, dk, rows, npix, pixel_step, row_step, g_row_step, cout", KERNEL_GRAD_BLOCKS)
  lines += _width_table("kKernelGradWidths", KERNEL_GRAD_BLOCKS)
  return "\n".join(lines)


def source() -> str:
  """C++ text of every block and of the two dispatch functions ``conv.cc`` calls."""
  parts = [_forward_block(ob, wb) for ob, wbs in FORWARD_BLOCKS.items() for wb in wbs]
  parts += [_kernel_grad_block(ob, cb) for ob, cbs in KERNEL_GRAD_BLOCKS.items() for cb in cbs]
  parts.append(_dispatch())
  return "// Generated by cnnjax/native/blocks.py.\n" + "\n\n".join(parts) + "\n"
