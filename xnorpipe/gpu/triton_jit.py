"""The @triton.jit kernels of xnorpipe's ops, one per op. The design, the wrappers, the tile
table and the launch descriptions are in xnorpipe/gpu/triton_kernels.py. The three
convolutions share `_conv_tile` (the integer sums of a tile), `_output_transform` and their
stores; its constexpr ALGO picks how the sums are made: "popcount" (`_group_xor_popcount`) or
"dot" (`_group_dot`, int8 tensor cores). Bit inputs read each group's words through
`_group_bit_words` (constexpr SPLIT_WORDS: groups that start inside words); SHUFFLE moves each
filter's output to its ChannelShuffle channel (`_shuffled`).

`triton_kernels.kernels()` executes this file as two private modules, one under
TRITON_INTERPRET=1 (interpreter functions, for CPU tensors) and one without (JIT functions, for
CUDA tensors and AOT compiles). So the kernels call only Triton builtins and the helpers below,
never triton.language.standard's jitted functions (tl.zeros, tl.sum, tl.cdiv): those were bound
to one of the two modes when triton was first imported.
"""

import triton
import triton.language as tl

# Scalars stay runtime int32 (not constexpr) so that one compiled kernel serves every layer
# geometry; `do_not_specialize` keeps the JIT from compiling variants per value (== 1, % 16),
# so the JIT path compiles the same code as the AOT path. triton_kernels.CONV_SCALARS etc. name
# the same params (a test checks).
_CONV_SCALARS = ("C", "H", "W", "M", "Ho", "Wo", "KH", "KW", "SH", "SW", "PT", "PL", "DH", "DW", "G", "RELU")
_POOL_SCALARS = ("NW", "H", "W", "Ho", "Wo", "KH", "KW", "SH", "SW", "PT", "PL")
_BINARIZE_SCALARS = ("C", "HW")

# True in the copy executed for Triton's interpreter.
_INTERPRETED = tl.constexpr(bool(triton.knobs.runtime.interpret))


@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(x, axis: tl.constexpr):
    """Integer sum along `axis`. The interpreter runs only Triton's own sum combine function
    fast (one NumPy call; any other combine runs per element pair), compiled code gets this
    module's `_add`: the same sum."""
    if _INTERPRETED:
        return tl.reduce(x, axis, tl.standard._sum_combine)
    else:
        return tl.reduce(x, axis, _add)


@triton.jit
def _binarize_words(x_img, thr_ptr, pix, live, c0, nch, HW):
    """uint32 words [K, P] at pixel offsets `pix` [P] of one image: word (k, p) holds channels
    c0[k] .. c0[k] + 31, of which the first nch[k] exist; bit j = x >= threshold (NaN: 0).
    Zero where not `live` [K, P] and past nch. Pixels are the fastest axis: coalesced loads."""
    j = tl.arange(0, 32)
    ch_ok = j[None, :] < nch[:, None]  # [K, 32]
    ch = c0[:, None] + j[None, :]
    mask = ch_ok[:, :, None] & live[:, None, :]  # [K, 32, P]
    xv = tl.load(x_img + ch[:, :, None] * HW + pix[None, None, :], mask=mask, other=0.0)
    t = tl.load(thr_ptr + ch, mask=ch_ok, other=0.0)
    one = tl.full(mask.shape, 1, tl.uint32)
    bits = tl.where((xv >= t[:, :, None]) & mask, one << j[None, :, None].to(tl.uint32), 0)
    return _sum(bits, 1)  # distinct powers of two: the sum is their OR


@triton.jit
def _group_bit_words(img, word0, sh, q, offs, mask, Cg, HW, SPLIT_WORDS: tl.constexpr):
    """uint32 words of a group's channels from a bit tensor: element (.., k, ..) holds the group's
    channels 32 q[k] .. 32 q[k] + 31 in bits 0..31, at pixel offsets `offs` (broadcast with the
    words) where `mask`. The group's channels start at bit `sh` of word `word0`; without
    SPLIT_WORDS sh is 0 (whole-word groups: one load per word). With it, a word's channels may
    straddle two words of the tensor: a funnel shift of both, the second loaded only where the
    channels reach into it. Bits past the group are left for the caller to mask."""
    lo = tl.load(img + (word0 + q) * HW + offs, mask=mask, other=0).to(tl.uint32, bitcast=True)
    if SPLIT_WORDS:
        need_hi = sh + tl.minimum(Cg - q * 32, 32) > 32
        hi = tl.load(img + (word0 + q + 1) * HW + offs, mask=mask & need_hi, other=0).to(tl.uint32, bitcast=True)
        s = sh.to(tl.uint32)
        lo = (lo >> s) | ((hi << 1) << (31 - s))  # hi << (32 - s) without a shift by 32 (s = 0: none)
    return lo


@triton.jit
def _group_start(g, Cg, NWG, SPLIT_WORDS: tl.constexpr):
    """(word, bit) where group g's first channel sits: bit inputs pack the groups' channels back
    to back (a group may start inside a word); float inputs are binarized per group, NWG words
    each."""
    if SPLIT_WORDS:
        word0 = (g * Cg) // 32
        sh = g * Cg - word0 * 32
    else:
        word0 = g * NWG
        sh = 0
    return word0, sh


@triton.jit
def _group_xor_popcount(in_img, thr_ptr, w_ptr, g, ih0, iw0, p_ok, offs_m, col_ok, Cg, NWG, H, W,
                        KH, KW, DH, DW, FLOAT_IN: tl.constexpr, SPLIT_WORDS: tl.constexpr, BLOCK_P: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """int32 [BLOCK_M, BLOCK_P]: popcount(Wb ^ Xb) over the in-image taps and the Cg channels of
    group g, for the filters where `col_ok` and the tile's pixels (origins ih0, iw0). Each step
    XORs BLOCK_K words of a tap as a [K, M, P] broadcast and sums over K: K is the slowest axis,
    so Triton's default layout keeps it inside each thread (no cross-thread reduction), and
    pixels the fastest, so input loads and output stores are coalesced."""
    part = tl.full([BLOCK_M, BLOCK_P], 0, tl.int32)
    taps = KH * KW
    w_rows = offs_m * (taps * NWG)  # W is [M, kH, kW, NWG]
    # Channel bits of the group's last word (1..32 of them), without a shift by 32.
    last_mask = tl.full([BLOCK_K], 0xFFFFFFFF, tl.uint32) >> (32 - (Cg - (NWG - 1) * 32)).to(tl.uint32)
    kq = tl.arange(0, BLOCK_K)
    HW = H * W
    word0, sh = _group_start(g, Cg, NWG, SPLIT_WORDS)
    for tap in range(taps):
        i = tap // KW
        ih = ih0 + i * DH
        iw = iw0 + (tap - i * KW) * DW
        valid = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        pix = ih * W + iw
        for q0 in range(0, NWG, BLOCK_K):
            q = q0 + kq
            q_ok = q < NWG
            live = q_ok[:, None] & valid[None, :]  # [K, P]
            word_mask = tl.where(q == NWG - 1, last_mask, 0xFFFFFFFF)
            x_mask = tl.where(live, word_mask[:, None], 0)  # padding taps, words past NWG, bits past Cg: 0
            if FLOAT_IN:
                a = _binarize_words(in_img, thr_ptr, pix, live, g * Cg + q * 32, Cg - q * 32, HW)
            else:  # bits [N, words, H, W]
                a = _group_bit_words(in_img, word0, sh, q[:, None], pix[None, :], live, Cg, HW, SPLIT_WORDS)
            b = tl.load(w_ptr + w_rows[None, :] + tap * NWG + q[:, None], mask=q_ok[:, None] & col_ok[None, :],
                        other=0).to(tl.uint32, bitcast=True)  # [K, M]
            x = (b[:, :, None] ^ a[:, None, :]) & x_mask[:, None, :]  # [K, M, P]
            # Popcount per word (SWAR: LLVM turns exactly this into one `popc`), summed over the K
            # words. Inlined, not helpers: each helper call costs the interpreter a re-patch of
            # triton.language, and this is the innermost loop.
            x = x - ((x >> 1) & 0x55555555)
            x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
            x = (x + (x >> 4)) & 0x0F0F0F0F
            x = ((x * 0x01010101) >> 24).to(tl.int32)
            if _INTERPRETED:
                part += tl.reduce(x, 0, tl.standard._sum_combine)
            else:
                part += tl.reduce(x, 0, _add)
    return part


@triton.jit
def _unpack_pm1(words, keep):
    """int8 [A, B, 32]: bit c of each int32 word [A, B] as +1 (set) or -1 (clear); 0 for the
    words where `keep` (broadcast to [A, B]) is 0 instead of -1.

    Per nibble, a few integer ops make 4 int8 values in one int32: a multiply by 0x00204081
    spreads the nibble's 4 bits to the low bits of 4 bytes (its shifted copies do not overlap),
    and `keep - 254 * s` turns each 0/1 byte into 0xFF (-1) or 0x01 (+1) without borrows (or 0
    everywhere where keep is 0). Every new axis is made by `tl.join` (a register axis in
    compiled code), never by broadcasting a range: so each thread expands its own words in
    registers, with constant shifts, and holds 32 consecutive channels of a word at the end."""
    x = tl.join(tl.join(words, words >> 16), tl.join(words >> 8, words >> 24))  # [A, B, 2, 2]: bytes 0 2 / 1 3
    x = tl.reshape(x, (words.shape[0], words.shape[1], 4))
    nib = tl.reshape(tl.join(x & 0xF, (x >> 4) & 0xF), (words.shape[0], words.shape[1], 8))  # channels 4i .. 4i + 3
    keep = tl.broadcast_to(keep, words.shape)
    k = tl.join(tl.join(keep, keep), tl.join(keep, keep))
    k = tl.reshape(tl.join(k, k), (words.shape[0], words.shape[1], 8))
    v = k - 254 * ((nib * 0x00204081) & (k & 0x01010101))
    b0 = v.to(tl.int8)
    b1 = (v >> 8).to(tl.int8)
    b2 = (v >> 16).to(tl.int8)
    b3 = (v >> 24).to(tl.int8)
    return tl.reshape(tl.join(tl.join(b0, b2), tl.join(b1, b3)), (words.shape[0], words.shape[1], 32))


@triton.jit
def _valid_taps(ih0, iw0, H, W, KH, KW, DH, DW, BLOCK_P: tl.constexpr):
    """In-image taps per output pixel: rows times columns."""
    nv_h = tl.full([BLOCK_P], 0, tl.int32)
    for i in range(KH):
        ih = ih0 + i * DH
        nv_h += ((ih >= 0) & (ih < H)).to(tl.int32)
    nv_w = tl.full([BLOCK_P], 0, tl.int32)
    for j in range(KW):
        iw = iw0 + j * DW
        nv_w += ((iw >= 0) & (iw < W)).to(tl.int32)
    return nv_h * nv_w


@triton.jit
def _group_dot(acc, in_img, thr_ptr, w_ptr, g, ih0, iw0, p_ok, offs_m, col_ok, Cg, NWG, H, W,
               KH, KW, DH, DW, FLOAT_IN: tl.constexpr, GROUPED: tl.constexpr, SPLIT_WORDS: tl.constexpr,
               BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc (int32 [BLOCK_M, BLOCK_P]) plus the contract's sum of Wb * Xb over the in-image taps
    and the Cg channels of group g (filters outside `col_ok`: + 0), as int8 tensor-core dots.
    One accumulator serves every group of a tile: no second one to hold in registers.

    The reduction axis is the filter's (tap, word) slots, flattened as W stores them
    ([M, kH * kW * NWG] words): each step takes BLOCK_K consecutive slots, which may straddle
    taps, unpacks them to +-1 int8 ([BLOCK_M, 32 BLOCK_K] weights, [32 BLOCK_K, BLOCK_P]
    inputs) and `tl.dot` adds their product into int32 (exact: |sum| <= taps * Cg < 2**24).
    Zeros do the masking: inputs at padding taps and at slots past the end, and, with GROUPED,
    weights of filters outside the group. Channels past Cg in the group's last word: the float
    input is 0 there; bit words have those bits cleared on both sides (-1 * -1), and the caller
    subtracts their (32 * NWG - Cg) * valid taps. Each slot's (tap row, tap column, word) is
    carried from step to step (no division in the loop)."""
    taps = KH * KW
    slots = taps * NWG
    w_rows = offs_m * slots  # W is [M, kH, kW, NWG]
    HW = H * W
    word0, sh = _group_start(g, Cg, NWG, SPLIT_WORDS)
    if GROUPED:
        w_keep = tl.where(col_ok, -1, 0)[:, None]
    else:  # rows past M are computed and never stored
        w_keep = tl.full([BLOCK_M, 1], -1, tl.int32)
    # Slot k of the step: word q, tap (i, j); the advance per step is BLOCK_K slots.
    kk = tl.arange(0, BLOCK_K)
    q = kk % NWG
    tap = kk // NWG
    i = tap // KW
    j = tap - i * KW
    adv_q = BLOCK_K % NWG
    adv_tap = BLOCK_K // NWG
    adv_i = adv_tap // KW
    adv_j = adv_tap - adv_i * KW
    for step in range(0, slots, BLOCK_K):
        ih = ih0[:, None] + (i * DH)[None, :]  # [P, K]
        iw = iw0[:, None] + (j * DW)[None, :]
        valid = p_ok[:, None] & (i < KH)[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        nlive = Cg - q * 32  # channels in word q: > 32 before the last word
        live_bits = tl.where(nlive >= 32, -1, (1 << tl.minimum(nlive, 31)) - 1)  # [K]
        wq = tl.load(w_ptr + w_rows[:, None] + (step + kk)[None, :], mask=(step + kk < slots)[None, :],
                     other=0)  # [M, K]
        w_pm1 = tl.reshape(_unpack_pm1(wq & live_bits[None, :], w_keep), (BLOCK_M, BLOCK_K * 32))
        if FLOAT_IN:
            c32 = tl.arange(0, 32)
            ch = q[:, None] * 32 + c32[None, :]  # [K, 32] group-local channels
            ch_ok = ch < Cg
            live = ch_ok[:, :, None] & tl.trans(valid)[:, None, :]  # [K, 32, P]
            pix = tl.trans(ih * W + iw)  # [K, P]
            xv = tl.load(in_img + (g * Cg + ch)[:, :, None] * HW + pix[:, None, :], mask=live, other=0.0)
            t = tl.load(thr_ptr + g * Cg + ch, mask=ch_ok, other=0.0)
            x_pm1 = tl.reshape(tl.where(live, tl.where(xv >= t[:, :, None], 1, -1), 0).to(tl.int8),
                               (BLOCK_K * 32, BLOCK_P))
        else:  # bits [N, words, H, W]
            xq = _group_bit_words(in_img, word0, sh, q[None, :], ih * W + iw, valid, Cg, HW,
                                  SPLIT_WORDS).to(tl.int32, bitcast=True)  # [P, K]
            x_pm1 = tl.trans(tl.reshape(_unpack_pm1(xq & live_bits[None, :], tl.where(valid, -1, 0)),
                                        (BLOCK_P, BLOCK_K * 32)))
        acc = tl.dot(w_pm1, x_pm1, acc, out_dtype=tl.int32)
        # Advance every slot by BLOCK_K: q < NWG and adv_q < NWG, so one wrap at most (j: alike).
        q += adv_q
        q_wrap = q >= NWG
        q = tl.where(q_wrap, q - NWG, q)
        j += adv_j + q_wrap.to(tl.int32)
        j_wrap = j >= KW
        j = tl.where(j_wrap, j - KW, j)
        i += adv_i + j_wrap.to(tl.int32)
    return acc


@triton.jit
def _conv_tile(in_ptr, thr_ptr, w_ptr, C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G,
               FLOAT_IN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
               BLOCK_K: tl.constexpr, GROUPED: tl.constexpr, ALGO: tl.constexpr, SPLIT_WORDS: tl.constexpr):
    """This program's tile: (n, pixel offsets, pixel mask, first filter, filter offsets, filter
    mask, the contract's integer sums int32 [BLOCK_M, BLOCK_P]). Program id 0 = (image, pixel
    tile, filter block), filter block fastest, so blocks that read the same input run together.
    ALGO "popcount": XOR + popcount on the CUDA cores (`_group_xor_popcount`); "dot": int8
    tensor-core dots of the unpacked +-1 values (`_group_dot`). SPLIT_WORDS: bit inputs whose
    groups start inside words (C/group not a multiple of 32; `_group_bit_words`)."""
    P = Ho * Wo
    m_blocks = (M + BLOCK_M - 1) // BLOCK_M
    per_image = ((P + BLOCK_P - 1) // BLOCK_P) * m_blocks
    pid = tl.program_id(0)
    n = pid // per_image
    r = pid - n * per_image
    tp = r // m_blocks
    m0 = (r - tp * m_blocks) * BLOCK_M
    offs_p = tp * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_m = m0 + tl.arange(0, BLOCK_M)
    p_ok = offs_p < P
    m_ok = offs_m < M
    oh = offs_p // Wo
    ow = offs_p - oh * Wo
    ih0 = oh * SH - PT
    iw0 = ow * SW - PL
    Cg = C // G
    NWG = (Cg + 31) // 32
    if FLOAT_IN:
        in_img = in_ptr + n.to(tl.int64) * C * H * W
    else:
        in_img = in_ptr + n.to(tl.int64) * ((C + 31) // 32) * H * W
    if ALGO == "dot":
        # Filters outside group g get zero weights: each group's dot adds only to its own rows.
        if GROUPED:
            Mg = M // G
            sums = tl.full([BLOCK_M, BLOCK_P], 0, tl.int32)
            g_last = (tl.minimum(m0 + BLOCK_M, M) - 1) // Mg
            for g in range(m0 // Mg, g_last + 1):
                sums = _group_dot(sums, in_img, thr_ptr, w_ptr, g, ih0, iw0, p_ok, offs_m, m_ok & (offs_m // Mg == g),
                                  Cg, NWG, H, W, KH, KW, DH, DW, FLOAT_IN, True, SPLIT_WORDS, BLOCK_P, BLOCK_M,
                                  BLOCK_K)
        else:
            sums = _group_dot(tl.full([BLOCK_M, BLOCK_P], 0, tl.int32), in_img, thr_ptr, w_ptr, 0, ih0, iw0, p_ok,
                              offs_m, m_ok, Cg, NWG, H, W, KH, KW, DH, DW, FLOAT_IN, False, False, BLOCK_P, BLOCK_M,
                              BLOCK_K)
        if not FLOAT_IN:  # the bit words' channels past Cg, -1 on both sides (each group: its own rows)
            dead = NWG * 32 - Cg
            if dead != 0:
                sums -= (dead * _valid_taps(ih0, iw0, H, W, KH, KW, DH, DW, BLOCK_P))[None, :]
    else:
        if GROUPED:
            Mg = M // G
            acc = tl.full([BLOCK_M, BLOCK_P], 0, tl.int32)
            g_last = (tl.minimum(m0 + BLOCK_M, M) - 1) // Mg
            for g in range(m0 // Mg, g_last + 1):
                col = m_ok & (offs_m // Mg == g)
                part = _group_xor_popcount(in_img, thr_ptr, w_ptr, g, ih0, iw0, p_ok, offs_m, col, Cg, NWG, H, W,
                                           KH, KW, DH, DW, FLOAT_IN, SPLIT_WORDS, BLOCK_P, BLOCK_M, BLOCK_K)
                acc += tl.where(col[:, None], part, 0)
        else:
            acc = _group_xor_popcount(in_img, thr_ptr, w_ptr, 0, ih0, iw0, p_ok, offs_m, m_ok, Cg, NWG, H, W,
                                      KH, KW, DH, DW, FLOAT_IN, False, BLOCK_P, BLOCK_M, BLOCK_K)
        sums = (_valid_taps(ih0, iw0, H, W, KH, KW, DH, DW, BLOCK_P) * Cg)[None, :] - 2 * acc
    return n, offs_p, p_ok, m0, offs_m, m_ok, sums


@triton.jit
def _output_transform(sums, scale_ptr, bias_ptr, offs_m, m_ok, RELU):
    """scale * float(sum), then + bias: two roundings (compiled without FP fusion), then relu."""
    scale = tl.load(scale_ptr + offs_m, mask=m_ok, other=0.0)
    bias = tl.load(bias_ptr + offs_m, mask=m_ok, other=0.0)
    y = sums.to(tl.float32) * scale[:, None]
    y = y + bias[:, None]
    # A scalar condition outside: the interpreter mishandles `scalar_bool & block_bool`.
    return tl.where(RELU != 0, tl.where(y < 0.0, 0.0, y), y)


@triton.jit
def _shuffled(offs_m, M, G):
    """The output channel of filter m with shuffle_output: ShuffleNet's channel shuffle with G
    groups, group g's j-th filter (m = g * M/G + j) to channel j * G + g."""
    Mg = M // G
    g = offs_m // Mg
    return (offs_m - g * Mg) * G + g


@triton.jit
def _store_float(y_ptr, y, n, offs_p, p_ok, offs_m, m_ok, M, P):
    out = y_ptr + n.to(tl.int64) * M * P
    tl.store(out + offs_m[:, None] * P + offs_p[None, :], y, mask=m_ok[:, None] & p_ok[None, :])


@triton.jit(do_not_specialize=_CONV_SCALARS)
def xnor_conv2d_kernel(x_ptr, w_ptr, thr_ptr, scale_ptr, bias_ptr,
                       C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G, RELU,
                       y_ptr,
                       BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUPED: tl.constexpr, ALGO: tl.constexpr):
    """XnorConv2d: X float [N, C, H, W] -> Y float [N, M, Ho, Wo], binarization fused."""
    n, offs_p, p_ok, m0, offs_m, m_ok, sums = _conv_tile(
        x_ptr, thr_ptr, w_ptr, C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G,
        True, BLOCK_P, BLOCK_M, BLOCK_K, GROUPED, ALGO, False)
    y = _output_transform(sums, scale_ptr, bias_ptr, offs_m, m_ok, RELU)
    _store_float(y_ptr, y, n, offs_p, p_ok, offs_m, m_ok, M, Ho * Wo)


@triton.jit(do_not_specialize=_CONV_SCALARS)
def xnor_conv2d_bits_kernel(xp_ptr, w_ptr, scale_ptr, bias_ptr,
                            C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G, RELU,
                            y_ptr,
                            BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                            GROUPED: tl.constexpr, ALGO: tl.constexpr, SPLIT_WORDS: tl.constexpr,
                            SHUFFLE: tl.constexpr):
    """XnorConv2dBits: bits [N, ceil(C/32), H, W] -> Y float [N, M, Ho, Wo]. SHUFFLE
    (shuffle_output with group > 1): filter m writes output channel `_shuffled`(m)."""
    n, offs_p, p_ok, m0, offs_m, m_ok, sums = _conv_tile(
        xp_ptr, xp_ptr, w_ptr, C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G,
        False, BLOCK_P, BLOCK_M, BLOCK_K, GROUPED, ALGO, SPLIT_WORDS)
    y = _output_transform(sums, scale_ptr, bias_ptr, offs_m, m_ok, RELU)
    out_m = _shuffled(offs_m, M, G) if SHUFFLE else offs_m
    _store_float(y_ptr, y, n, offs_p, p_ok, out_m, m_ok, M, Ho * Wo)


@triton.jit(do_not_specialize=_CONV_SCALARS)
def xnor_conv2d_bits_binarize_kernel(xp_ptr, w_ptr, scale_ptr, bias_ptr, othr_ptr,
                                     C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G, RELU,
                                     out_ptr,
                                     BLOCK_P: tl.constexpr, BLOCK_M: tl.constexpr,
                                     BLOCK_K: tl.constexpr, GROUPED: tl.constexpr, ALGO: tl.constexpr,
                                     SPLIT_WORDS: tl.constexpr, SHUFFLE: tl.constexpr):
    """XnorConv2dBitsBinarize: bits -> bits [N, ceil(M/32), Ho, Wo], bit m = Y[m] >=
    output_threshold[m] with Y computed exactly as XnorConv2dBits (NaN: 0; bits past M: 0).
    BLOCK_M is a multiple of 32, so every output word belongs to one program. With SHUFFLE,
    filter m's bit is output channel `_shuffled`(m), compared with that channel's threshold: the
    bits of a word come from several groups, so several programs, and each program ORs its set
    bits into the output atomically (the wrapper zeroes the output first)."""
    n, offs_p, p_ok, m0, offs_m, m_ok, sums = _conv_tile(
        xp_ptr, xp_ptr, w_ptr, C, H, W, M, Ho, Wo, KH, KW, SH, SW, PT, PL, DH, DW, G,
        False, BLOCK_P, BLOCK_M, BLOCK_K, GROUPED, ALGO, SPLIT_WORDS)
    y = _output_transform(sums, scale_ptr, bias_ptr, offs_m, m_ok, RELU)
    P = Ho * Wo
    NWM = (M + 31) // 32
    out = out_ptr + n.to(tl.int64) * NWM * P
    one = tl.full([BLOCK_M, BLOCK_P], 1, tl.uint32)
    if SHUFFLE:
        out_m = _shuffled(offs_m, M, G)
        t = tl.load(othr_ptr + out_m, mask=m_ok, other=0.0)
        bits = tl.where((y >= t[:, None]) & m_ok[:, None], one << (out_m % 32)[:, None].to(tl.uint32), 0)
        tl.atomic_or(out + (out_m // 32)[:, None] * P + offs_p[None, :], bits.to(tl.int32, bitcast=True),
                     mask=(bits != 0) & p_ok[None, :], sem="relaxed")
    else:
        t = tl.load(othr_ptr + offs_m, mask=m_ok, other=0.0)
        bits = tl.where((y >= t[:, None]) & m_ok[:, None], one << (offs_m % 32)[:, None].to(tl.uint32), 0)
        words = _sum(tl.reshape(bits, (BLOCK_M // 32, 32, BLOCK_P)), 1)  # distinct bits: sum = OR
        offs_q = m0 // 32 + tl.arange(0, BLOCK_M // 32)
        tl.store(out + offs_q[:, None] * P + offs_p[None, :], words.to(tl.int32, bitcast=True),
                 mask=(offs_q < NWM)[:, None] & p_ok[None, :])


@triton.jit(do_not_specialize=_POOL_SCALARS)
def bit_max_pool_kernel(xp_ptr, NW, H, W, Ho, Wo, KH, KW, SH, SW, PT, PL, out_ptr,
                        BLOCK_P: tl.constexpr):
    """BitMaxPool: word-wise OR over each window's in-image taps. Program (image, pixel tile)
    on axis 0, word plane on axis 1."""
    P = Ho * Wo
    tiles = (P + BLOCK_P - 1) // BLOCK_P
    pid = tl.program_id(0)
    q = tl.program_id(1)
    n = pid // tiles
    offs_p = (pid - n * tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < P
    oh = offs_p // Wo
    ih0 = oh * SH - PT
    iw0 = (offs_p - oh * Wo) * SW - PL
    plane = n.to(tl.int64) * NW + q
    src = xp_ptr + plane * H * W
    acc = tl.full([BLOCK_P], 0, tl.int32)
    for i in range(KH):
        ih = ih0 + i
        row_ok = p_ok & (ih >= 0) & (ih < H)
        for j in range(KW):
            iw = iw0 + j
            acc |= tl.load(src + ih * W + iw, mask=row_ok & (iw >= 0) & (iw < W), other=0)
    tl.store(out_ptr + plane * P + offs_p, acc, mask=p_ok)


@triton.jit(do_not_specialize=_BINARIZE_SCALARS)
def binarize_kernel(x_ptr, thr_ptr, C, HW, out_ptr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
    """Binarize: X float [N, C, H, W] -> bits [N, ceil(C/32), H, W]. Program (image, pixel
    tile) on axis 0, BLOCK_W output words on axis 1."""
    tiles = (HW + BLOCK_P - 1) // BLOCK_P
    pid = tl.program_id(0)
    n = pid // tiles
    offs_p = (pid - n * tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    p_ok = offs_p < HW
    NW = (C + 31) // 32
    q = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    live = (q < NW)[:, None] & p_ok[None, :]
    words = _binarize_words(x_ptr + n.to(tl.int64) * C * HW, thr_ptr, offs_p, live, q * 32, C - q * 32, HW)
    out = out_ptr + n.to(tl.int64) * NW * HW
    tl.store(out + q[:, None] * HW + offs_p[None, :], words.to(tl.int32, bitcast=True), mask=live)
