/*
 * Compiled EAD kernel (optional): builder.descriptors._ead_kernel.
 *
 * The embedded atom density of every atom of one structure (PyXtal_FF convention: definition,
 * feature order and the plan's safety bounds in builder/descriptors/ead.py and ead_kernel.py).
 * Plain C99 plus the CPython API (buffer protocol only, no NumPy headers); GNU vector extensions
 * and target attributes where the compiler has them. Single-threaded; the GIL is released.
 *
 * Per centre i (edges sorted by centre), per chunk of up to KC = 64 of its edges:
 *   1. chunk_edges: d, Z_j f_c(d) with f_c = sin^2(pi (rc - d) / (2 rc)), the edge vectors
 *      pos[j] + shift @ cell - pos[i] and the M monomial weights w[m] = Z_j f_c x^lx y^ly z^lz
 *      (each from the monomial with one power less), vectorised over the chunk's edges;
 *   2. per eta with a block shape (B, blocks, h) (B a multiple of 8, h = 0 or B/2; the plan's
 *      choice): the shifts are blocks of B grid points R_b + tau Delta, tau = t - h, t < B,
 *      about the anchor R_b = Rs[bB + h] (the plan's table), and
 *          exp(-eta (d - R_b - tau Delta)^2) = A_b * P_t * S_bt,
 *          A_b = exp(-eta (d - R_b)^2 + c_b),  P_t = exp(2 eta Delta d)^tau,
 *          S_bt = exp(-2 eta Delta tau R_b - eta Delta^2 tau^2 - c_b)  (tables of the plan;
 *          c_b = 0 for h = 0, else the largest such exponent of the block, so S_bt <= 1):
 *      the recurrence restarted exactly at every block. Per edge: blocks + 1 exps (+ 1 for
 *      P_0 = p^-h when h > 0; vectorised over the chunk), P_t by products (chunk_powers: the
 *      first 8 by a chain vectorised across 8 edges); a derived eta (the plan's source s >= 0
 *      and power n: eta = n eta_s, the same blocks and anchors, c_b = n c_b(s)) takes
 *      A_b = A_b(s)^n by products instead of its block exps (set 3: 9 instead of 24 exps per
 *      edge, set 2: 18 instead of 39), in one pass straight into its weights
 *      (power_block_weights); the weights wa[m blocks + b] = w[m] A_b, then
 *          T[m][eta][bB + t] += sum over the chunk's edges of wa[m blocks + b] P_t,
 *      a small matrix product (M blocks rows x edges) (edges x B) run GEMM-style (contract:
 *      register tiles of C held over all the chunk's edges, ~90 % of the work; T stays in L1:
 *      M * |eta| * (blocks B) doubles, 25-31 KB for the registered sets);
 *      per eta without a block shape (irregular or short grids, very steep Gaussians): the
 *      Gaussians g[k] = exp(-eta (d - Rs_k)^2) directly and rho[m][eta] += w[m] g by the same
 *      contraction;
 *   3. per centre: rho = S * T (after the sum over neighbours, as the NumPy path), then
 *      x[l][eta][k] = sum_m reduce[l][m] rho[m][eta][k]^2 (reduce_row: one pass, the sum in
 *      registers).
 * Exponentials are a branch-free polynomial (ead_exp, ~1 ulp) that the compiler vectorises.
 *
 * Instruction sets: on x86-64 with GCC/Clang the kernel body is compiled three times, for the
 * baseline (SSE2: any x86-64 CPU) and under __attribute__((target(...))) for AVX2 + FMA and for
 * AVX-512F; the variant is picked at run time with __builtin_cpu_supports. The module is built
 * with portable flags (no -march) and still uses the widest vectors of the CPU it runs on.
 * Other platforms and compilers get the baseline (plain loops where vector types are absent).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever the Python <-> C calling convention changes (checked by ead_kernel.py). */
#define EAD_KERNEL_ABI 3

#ifndef EAD_SOURCE_HASH /* sha256 of this file, set by setup.py (ead_kernel.py detects stale builds) */
#define EAD_SOURCE_HASH ""
#endif

#define KC 64 /* edges per chunk: the K extent of the register-blocked contraction */
#define SHAPE 5 /* plan entries per eta */
#define ALIGN 64

#if defined(__GNUC__) || defined(__clang__)
#define EAD_INLINE static inline __attribute__((always_inline))
#else
#define EAD_INLINE static inline
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define EAD_X86_DISPATCH 1
#else
#define EAD_X86_DISPATCH 0
#endif

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_AVX512 = 2, ISA_COUNT = 3 };
static const char *const isa_names[ISA_COUNT] = {"generic", "avx2", "avx512"};

enum {
    EAD_OK = 0,
    EAD_UNSORTED = 1, /* centres not in ascending order: the caller sorts and retries */
    EAD_BAD_INDEX = 2,
    EAD_NO_MEMORY = 3,
};

typedef struct {
    /* structure */
    int64_t n_atoms, n_edges;
    const int64_t *z;         /* (N,) */
    const double *pos;        /* (N, 3) */
    const double *cell;       /* (3, 3) rows = lattice vectors */
    const int64_t *neighbour; /* (E,) edge_index[0] */
    const int64_t *centre;    /* (E,) edge_index[1], ascending */
    const int64_t *shift;     /* (E, 3) */
    const double *dist;       /* (E,) */
    /* plan */
    int64_t n_l, n_mono, n_etas, n_rs; /* L + 1, M, |eta|, |Rs| */
    int64_t scale_stride;              /* length of each row of `scale` */
    int64_t anchor_stride;             /* length of each row of `anchors` */
    const int64_t *shape;              /* (|eta|, SHAPE): B (0 = direct), blocks, offset h,
                                        * source eta (-1: none), power n (see chunk_eta) */
    const int64_t *rec;                /* (M - 1, 2): source monomial, axis */
    double rc, step;
    const double *etas, *rs;
    const double *reduce; /* (L + 1, M) */
    const double *scale;  /* (|eta|, scale_stride): S_bt at k = bB + t, 0 beyond |Rs| */
    const double *anchors; /* (|eta|, anchor_stride): R_b = Rs[bB + h] (or Rs[bB] + h Delta) */
    const double *lifts;   /* (|eta|, anchor_stride): c_b, A_b = exp(-eta (d - R_b)^2 + c_b) */
    /* output */
    double *out; /* (N, (L + 1) |eta| |Rs|) */
} ead_args;

typedef struct {
    int64_t rs_pad; /* |Rs| rounded up to a multiple of 8 */
    int64_t g_pad;  /* row stride of rho: >= rs_pad and >= every B * blocks, 8 | g_pad */
    double *rho;    /* (M, |eta|, g_pad): rho, or T (unscaled) for a block eta */
    double *d;      /* (KC,): distances */
    double *v;      /* (3, KC): edge vectors */
    double *w;      /* (M, KC): monomial weights */
    double *x;      /* (sum over etas of blocks + 2, KC): exponents, then exps, of each eta */
    int64_t *x_rows; /* (|eta|,): the first row of each eta's exps in x */
    int64_t *terms;  /* (M,): scratch of reduce_row */
    double *wa;     /* (M * largest blocks, KC): weights times anchors */
    double *p;      /* (KC, largest B or rs_pad): powers P_t, or Gaussians of a direct eta */
    void *block;    /* the allocation */
} ead_work;

/* ------------------------------------------------------------------------------------------ */
/* exp: branch-free, vectorisable.                                                              */
/* ------------------------------------------------------------------------------------------ */

/*
 * exp(x) for -1e15 < x <= 709 (the plan bounds the exponents of P_t by 600), 0 for x < -708
 * (no subnormals: the plan's safety argument only needs values above e^-600).
 * Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2 (+ rounding), Taylor polynomial of degree 13
 * (truncation < 5e-18 relative), 2^k built in the exponent bits: ~1 ulp.
 */
EAD_INLINE double ead_exp(double x)
{
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits: k ln2_hi exact */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    double kd = x * log2e + shifter;
    uint64_t ki;
    memcpy(&ki, &kd, sizeof ki);
    kd -= shifter;
    const double r = (x - kd * ln2_hi) - kd * ln2_lo;
    double q = 1.6059043836821614599e-10; /* 1/13! */
    q = q * r + 2.0876756987868098979e-09;
    q = q * r + 2.5052108385441718775e-08;
    q = q * r + 2.7557319223985890653e-07;
    q = q * r + 2.7557319223985890653e-06;
    q = q * r + 2.4801587301587301587e-05;
    q = q * r + 1.9841269841269841270e-04;
    q = q * r + 1.3888888888888888889e-03;
    q = q * r + 8.3333333333333333333e-03;
    q = q * r + 4.1666666666666666667e-02;
    q = q * r + 1.6666666666666666667e-01;
    q = q * r + 0.5;
    q = q * r + 1.0;
    q = q * r + 1.0;
    /* 2^k from the low 12 bits of ki (k mod 4096: the shifter is a multiple of 4096 there),
     * zeroed below -708 by an integer mask: no branch, no select of floating-point values, so
     * the loop vectorises also under the default -ftrapping-math */
    const uint64_t keep = (uint64_t)0 - (uint64_t)(x >= -708.0);
    const uint64_t bits = ((ki + 1023u) << 52) & keep;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return q * scale;
}

EAD_INLINE void ead_exp_inplace(double *restrict v, int64_t n)
{
    for (int64_t k = 0; k < n; k++)
        v[k] = ead_exp(v[k]);
}

/* ------------------------------------------------------------------------------------------ */
/* The kernel body, compiled once per instruction set.                                          */
/* ------------------------------------------------------------------------------------------ */

/* g[k] = exp(-eta (d - rs[k])^2), k < n. */
EAD_INLINE void direct_gaussians(double *restrict g, const double *restrict rs, double d,
                                 double eta, int64_t n)
{
    for (int64_t k = 0; k < n; k++) {
        const double u = d - rs[k];
        g[k] = -eta * u * u;
    }
    ead_exp_inplace(g, n);
}

/* Powers P_t = start p^t, t < B rounded up to 8, of one edge (start = p^-h: P_t = p^(t-h)):
 * t < 8 by a product chain, then P_{s+t} = P_{s-8+t} p^8, 8 at a time (kept in registers: no
 * store-to-load round trip). The relative error of P_t is <= ~(t + 1) ulp (t < B <= 64).
 * Entries past B may overflow; they are never read. */
EAD_INLINE void edge_powers(double *restrict p, double base, double start, int64_t length)
{
    const int64_t p_len = (length + 7) & ~(int64_t)7;
    double q[8];
    q[0] = 1.0;
    for (int t = 1; t < 8; t++)
        q[t] = q[t - 1] * base;
    const double base8 = q[7] * base;
    if (start != 1.0)
        for (int t = 0; t < 8; t++)
            q[t] *= start;
    for (int t = 0; t < 8; t++)
        p[t] = q[t];
    for (int64_t s = 8; s < p_len; s += 8)
        for (int t = 0; t < 8; t++) {
            q[t] *= base8;
            p[s + t] = q[t];
        }
}

/* The highest set bit of power >= 1. */
EAD_INLINE int top_bit(int64_t power)
{
    int top = 62;
    while (!((power >> top) & 1))
        top--;
    return top;
}

/* x[b][k] = -eta (d_k - R_b)^2 + c_b for the anchors R_b and lifts c_b (first_block <= b <
 * blocks), x[blocks][k] = 2 eta Delta d_k
 * and x[blocks + 1][k] = -h 2 eta Delta d_k (the exponent of P_0 = p^-h), k < n (rows KC
 * apart). */
EAD_INLINE void chunk_exponents(double *restrict x, const double *restrict d,
                                const double *restrict anchors, const double *restrict lifts,
                                double eta, double step, int64_t offset, int64_t first_block,
                                int64_t n_blocks, int64_t n)
{
    for (int64_t b = first_block; b < n_blocks; b++) {
        const double anchor = anchors[b], lift = lifts[b];
        for (int64_t k = 0; k < n; k++) {
            const double u = d[k] - anchor;
            x[b * KC + k] = -eta * u * u + lift;
        }
    }
    for (int64_t k = 0; k < n; k++)
        x[n_blocks * KC + k] = 2.0 * eta * step * d[k];
    if (offset != 0)
        for (int64_t k = 0; k < n; k++)
            x[(n_blocks + 1) * KC + k] = -(double)offset * x[n_blocks * KC + k];
}

/* wa[m blocks + b][k] = w[m][k] A_b[k], k < n: the chunk's weights times the block anchors
 * (the rows of the contraction's left operand, KC apart). */
EAD_INLINE void chunk_block_weights(double *restrict wa, const double *restrict w,
                                    const double *restrict anchors, int64_t n_mono,
                                    int64_t n_blocks, int64_t n)
{
    for (int64_t m = 0; m < n_mono; m++)
        for (int64_t b = 0; b < n_blocks; b++)
            for (int64_t k = 0; k < n; k++)
                wa[(m * n_blocks + b) * KC + k] = w[m * KC + k] * anchors[b * KC + k];
}

/*
 * The contraction, ~90 % of the work: for every row r < n_rows and column c < n_cols,
 *     C[r][c] += sum_{k < n} wa[r][k] P[k][c],
 * C[r] = t_rows + (r / blocks) m_stride + (r % blocks) B (the sums T[m][eta][bB + t] of block b
 * of monomial m; a direct eta has one block and C[m] = rho[m][eta]). It is a small matrix
 * product (rows x n) (n x columns), run GEMM-style: a tile of RT rows x CV vectors of C stays
 * in registers over all n edges of the chunk, each edge costing CV vector loads of P, RT
 * broadcasts of wa and RT * CV independent multiply-adds (no dependency chain, no load or store
 * of C inside the loop). Tiles: CV vectors of VW doubles as wide as the columns allow, rows
 * split evenly into tiles of at most RT_MAX(CV) (the register file: RT CV + CV + 1 vectors).
 * With GCC/Clang the tile is explicit GNU vectors (RT and CV compile-time constants, the loops
 * unrolled: the accumulators live in registers); other compilers get the plain loops.
 */
#define EAD_MAX_RT 12
#define EAD_MAX_CV 4

#define EAD_TILE_PARAMS                                                                        \
    double *restrict t_rows, int64_t m_stride, int64_t n_blocks, int64_t length, int64_t r0,  \
        int64_t m0, int64_t b0, int64_t col, const double *restrict wa,                       \
        const double *restrict p, int64_t ldp, int64_t n, int first
#define EAD_TILE_ARGS t_rows, m_stride, n_blocks, length, r0, m0, b0, col, wa, p, ldp, n, first

#if defined(__GNUC__) || defined(__clang__)
#define EAD_HAVE_VECTORS 1
#define EAD_UNROLL _Pragma("GCC unroll 16")
typedef double ead_v2 __attribute__((vector_size(16)));
typedef double ead_v4 __attribute__((vector_size(32)));
typedef double ead_v8 __attribute__((vector_size(64)));

#define EAD_DEFINE_TILE(NAME, VT, VW)                                                          \
    EAD_INLINE void NAME(EAD_TILE_PARAMS, const int rt, const int cv)                         \
    {                                                                                          \
        VT acc[EAD_MAX_RT][EAD_MAX_CV];                                                        \
        double *rows[EAD_MAX_RT];                                                              \
        const double *left[EAD_MAX_RT];                                                        \
        double *next = t_rows + m0 * m_stride + b0 * length + col; /* row r0 = (m0, b0) */     \
        int64_t b = b0;                                                                        \
        EAD_UNROLL for (int i = 0; i < rt; i++)                                                \
        {                                                                                      \
            rows[i] = next;                                                                    \
            left[i] = wa + (r0 + i) * KC;                                                      \
            if (++b == n_blocks) { /* (m, blocks - 1) -> (m + 1, 0) */                         \
                b = 0;                                                                         \
                next += m_stride - (n_blocks - 1) * length;                                    \
            } else                                                                             \
                next += length;                                                                \
            EAD_UNROLL for (int j = 0; j < cv; j++)                                            \
            {                                                                                  \
                if (first)                                                                     \
                    acc[i][j] = (VT){0};                                                       \
                else                                                                           \
                    memcpy(&acc[i][j], rows[i] + j * VW, sizeof(VT));                          \
            }                                                                                  \
        }                                                                                      \
        const double *pk = p + col;                                                            \
        for (int64_t k = 0; k < n; k++, pk += ldp) {                                           \
            VT pv[EAD_MAX_CV];                                                                 \
            EAD_UNROLL for (int j = 0; j < cv; j++) memcpy(&pv[j], pk + j * VW, sizeof(VT));   \
            EAD_UNROLL for (int i = 0; i < rt; i++)                                            \
            {                                                                                  \
                const double s = left[i][k];                                                   \
                EAD_UNROLL for (int j = 0; j < cv; j++) acc[i][j] += s * pv[j];                \
            }                                                                                  \
        }                                                                                      \
        EAD_UNROLL for (int i = 0; i < rt; i++) EAD_UNROLL for (int j = 0; j < cv; j++)        \
            memcpy(rows[i] + j * VW, &acc[i][j], sizeof(VT));                                  \
    }

EAD_DEFINE_TILE(tile_v2, ead_v2, 2)
EAD_DEFINE_TILE(tile_v4, ead_v4, 4)
EAD_DEFINE_TILE(tile_v8, ead_v8, 8)

#define EAD_CASE(TILE, RT, CV)                                                                 \
    case RT:                                                                                   \
        TILE(EAD_TILE_ARGS, RT, CV);                                                           \
        break;
#define EAD_CASES_6(TILE, CV)                                                                  \
    EAD_CASE(TILE, 1, CV)                                                                      \
    EAD_CASE(TILE, 2, CV)                                                                      \
    EAD_CASE(TILE, 3, CV) EAD_CASE(TILE, 4, CV) EAD_CASE(TILE, 5, CV) EAD_CASE(TILE, 6, CV)
#define EAD_CASES_12(TILE, CV)                                                                 \
    EAD_CASES_6(TILE, CV)                                                                      \
    EAD_CASE(TILE, 7, CV)                                                                      \
    EAD_CASE(TILE, 8, CV)                                                                      \
    EAD_CASE(TILE, 9, CV) EAD_CASE(TILE, 10, CV) EAD_CASE(TILE, 11, CV) EAD_CASE(TILE, 12, CV)

/* SSE2 and AVX2 (16 vector registers): tiles of up to 6 rows x 2 vectors (12 accumulators);
 * the columns (B or |Rs| padded, multiples of 8) always hold whole pairs of vectors. */
EAD_INLINE void tile_16reg_v2(EAD_TILE_PARAMS, int rt, int cv)
{
    (void)cv;
    switch (rt) { EAD_CASES_6(tile_v2, 2) }
}
EAD_INLINE void tile_16reg_v4(EAD_TILE_PARAMS, int rt, int cv)
{
    (void)cv;
    switch (rt) { EAD_CASES_6(tile_v4, 2) }
}
/* AVX-512 (32 registers): 6 rows x 4 vectors, 12 x 2 or 12 x 1 (24, 24 or 12 accumulators). */
EAD_INLINE void tile_32reg_v8(EAD_TILE_PARAMS, int rt, int cv)
{
    if (cv == 4) {
        switch (rt) { EAD_CASES_6(tile_v8, 4) }
    } else if (cv == 2) {
        switch (rt) { EAD_CASES_12(tile_v8, 2) }
    } else {
        switch (rt) { EAD_CASES_12(tile_v8, 1) }
    }
}

#define EAD_DEFINE_CONTRACT(NAME, TILE, VW, CV_MAX, RT_MAX)                                    \
    EAD_INLINE void NAME(double *restrict t_rows, int64_t m_stride, int64_t n_blocks,          \
                         int64_t length, const double *restrict wa, const double *restrict p,  \
                         int64_t ldp, int64_t n, int first, int64_t n_rows, int64_t n_cols)   \
    {                                                                                          \
        const int64_t vectors = n_cols / VW;                                                   \
        const int cv = (CV_MAX >= 4 && vectors % 4 == 0) ? 4                                   \
                       : (CV_MAX >= 2 && vectors % 2 == 0) ? 2                                 \
                                                           : 1;                                \
        const int64_t rt_max = RT_MAX(cv);                                                     \
        const int64_t n_tiles = (n_rows + rt_max - 1) / rt_max;                                \
        for (int64_t col = 0; col < n_cols; col += cv * VW) {                                  \
            int64_t r0 = 0, m0 = 0, b0 = 0; /* row r0 = (m0, b0): no division per tile */      \
            for (int64_t tile = 0; tile < n_tiles; tile++) {                                   \
                const int rt = (int)(n_rows / n_tiles + (tile < n_rows % n_tiles));            \
                TILE(EAD_TILE_ARGS, rt, cv);                                                   \
                r0 += rt;                                                                      \
                for (b0 += rt; b0 >= n_blocks; b0 -= n_blocks)                                 \
                    m0++;                                                                      \
            }                                                                                  \
        }                                                                                      \
    }
#define EAD_RT_16REG(cv) 6
#define EAD_RT_32REG(cv) ((cv) == 4 ? 6 : 12)
EAD_DEFINE_CONTRACT(contract_v2, tile_16reg_v2, 2, 2, EAD_RT_16REG)
EAD_DEFINE_CONTRACT(contract_v4, tile_16reg_v4, 4, 2, EAD_RT_16REG)
EAD_DEFINE_CONTRACT(contract_v8, tile_32reg_v8, 8, 4, EAD_RT_32REG)
#else
#define EAD_HAVE_VECTORS 0
#endif

#define EAD_CONTRACT_PARAMS                                                                    \
    double *restrict t_rows, int64_t m_stride, int64_t n_blocks, int64_t length,               \
        const double *restrict wa, const double *restrict p, int64_t ldp, int64_t n,           \
        int first, int64_t n_rows, int64_t n_cols
#define EAD_CONTRACT_ARGS t_rows, m_stride, n_blocks, length, wa, p, ldp, n, first, n_rows, n_cols

/* The contraction for a vector width (8, 4 or 2 doubles; plain loops without GNU vectors). */
EAD_INLINE void contract(EAD_CONTRACT_PARAMS, int vector_width)
{
#if EAD_HAVE_VECTORS
    if (vector_width == 8)
        contract_v8(EAD_CONTRACT_ARGS);
    else if (vector_width == 4)
        contract_v4(EAD_CONTRACT_ARGS);
    else
        contract_v2(EAD_CONTRACT_ARGS);
#else
    (void)vector_width;
    for (int64_t r = 0; r < n_rows; r++) {
        double *row = t_rows + (r / n_blocks) * m_stride + (r % n_blocks) * length;
        if (first)
            for (int64_t c = 0; c < n_cols; c++)
                row[c] = 0.0;
        for (int64_t k = 0; k < n; k++) {
            const double s = wa[r * KC + k];
            for (int64_t c = 0; c < n_cols; c++)
                row[c] += s * p[k * ldp + c];
        }
    }
#endif
}

/* Powers P_t = start_k p_k^t of the chunk's edges k < n (n a multiple of 8; start_k = p_k^-h, or
 * 1 without `starts`), t < length (a multiple of 8), rows of P `length` apart; as edge_powers
 * per edge (bitwise: the same products in the same order; a factor start = 1 is exact), but
 * the chain t < 8 vectorised across 8 edges at a time and moved into the rows by 4 x 4
 * transposes, then P_{s+t} = P_{s-8+t} p^8, 8 at a time. */
#if EAD_HAVE_VECTORS
typedef int64_t ead_i4 __attribute__((vector_size(32)));
#if defined(__clang__)
#define EAD_SHUFFLE4(a, b, i, j, k, l) __builtin_shufflevector(a, b, i, j, k, l)
#else
#define EAD_SHUFFLE4(a, b, i, j, k, l) __builtin_shuffle(a, b, (ead_i4){i, j, k, l})
#endif

/* out[j][t] = in[t][j], t, j < 4. */
EAD_INLINE void transpose4(ead_v4 *restrict out, const ead_v4 *restrict in)
{
    const ead_v4 t0 = EAD_SHUFFLE4(in[0], in[1], 0, 4, 2, 6);
    const ead_v4 t1 = EAD_SHUFFLE4(in[0], in[1], 1, 5, 3, 7);
    const ead_v4 t2 = EAD_SHUFFLE4(in[2], in[3], 0, 4, 2, 6);
    const ead_v4 t3 = EAD_SHUFFLE4(in[2], in[3], 1, 5, 3, 7);
    out[0] = EAD_SHUFFLE4(t0, t2, 0, 1, 4, 5);
    out[1] = EAD_SHUFFLE4(t1, t3, 0, 1, 4, 5);
    out[2] = EAD_SHUFFLE4(t0, t2, 2, 3, 6, 7);
    out[3] = EAD_SHUFFLE4(t1, t3, 2, 3, 6, 7);
}

EAD_INLINE void chunk_powers(double *restrict p, const double *restrict bases,
                             const double *restrict starts, int64_t length, int64_t n,
                             int vector_width)
{
    if (vector_width < 4) { /* SSE2: the transposes cost more than they save */
        for (int64_t k = 0; k < n; k++)
            edge_powers(p + k * length, bases[k], starts != NULL ? starts[k] : 1.0, length);
        return;
    }
    for (int64_t k0 = 0; k0 < n; k0 += 8) {
        ead_v4 base[2], start[2], q[8][2], b8[2];
        EAD_UNROLL for (int h = 0; h < 2; h++)
        {
            memcpy(&base[h], bases + k0 + 4 * h, sizeof(ead_v4));
            start[h] = (ead_v4){1.0, 1.0, 1.0, 1.0};
            if (starts != NULL)
                memcpy(&start[h], starts + k0 + 4 * h, sizeof(ead_v4));
            q[0][h] = (ead_v4){1.0, 1.0, 1.0, 1.0};
        }
        EAD_UNROLL for (int t = 1; t < 8; t++) EAD_UNROLL for (int h = 0; h < 2; h++)
            q[t][h] = q[t - 1][h] * base[h];
        EAD_UNROLL for (int h = 0; h < 2; h++) b8[h] = q[7][h] * base[h];
        if (starts != NULL)
            EAD_UNROLL for (int t = 0; t < 8; t++) EAD_UNROLL for (int h = 0; h < 2; h++)
                q[t][h] *= start[h];
        EAD_UNROLL for (int h = 0; h < 2; h++)
        {
            ead_v4 lo[4], hi[4];
            transpose4(lo, (const ead_v4[4]){q[0][h], q[1][h], q[2][h], q[3][h]});
            transpose4(hi, (const ead_v4[4]){q[4][h], q[5][h], q[6][h], q[7][h]});
            double *rows[4]; /* 64-byte aligned: p is, and length is a multiple of 8 */
            EAD_UNROLL for (int j = 0; j < 4; j++)
            {
                rows[j] = __builtin_assume_aligned(p + (k0 + 4 * h + j) * length, 64);
                memcpy(rows[j], &lo[j], sizeof(ead_v4));
                memcpy(rows[j] + 4, &hi[j], sizeof(ead_v4));
            }
            for (int64_t s = 8; s < length; s += 8)
                EAD_UNROLL for (int j = 0; j < 4; j++)
                {
                    const double f = b8[h][j];
                    lo[j] *= f;
                    hi[j] *= f;
                    memcpy(__builtin_assume_aligned(rows[j] + s, 32), &lo[j], sizeof(ead_v4));
                    memcpy(__builtin_assume_aligned(rows[j] + s + 4, 32), &hi[j],
                           sizeof(ead_v4));
                }
        }
    }
}
#else
EAD_INLINE void chunk_powers(double *restrict p, const double *restrict bases,
                             const double *restrict starts, int64_t length, int64_t n,
                             int vector_width)
{
    (void)vector_width;
    for (int64_t k = 0; k < n; k++)
        edge_powers(p + k * length, bases[k], starts != NULL ? starts[k] : 1.0, length);
}
#endif

/* wa[m blocks + b][k] = w[m][k] A_b[k] with A_b[k] = in[b][k]^power (power >= 2, its highest
 * set bit `top`; left-to-right binary powering: <= 2 log2(power) products, relative error
 * <= ~(power + 2 log2(power)) ulp), A_b flushed to 0 where it falls below DBL_MIN (no
 * subnormals: as ead_exp flushes below e^-708); b < blocks, k < n (a multiple of 8; rows of
 * in, w and wa KC apart, 64-byte aligned). One pass: the anchors of 8 edges at a time stay in
 * registers from the source row to the weights (the block weights of a derived eta: the
 * products of chunk_block_weights). */
#if EAD_HAVE_VECTORS
EAD_INLINE void power_block_weights(double *restrict wa, const double *restrict w,
                                    const double *restrict in, int64_t power, int top,
                                    int64_t n_mono, int64_t n_blocks, int64_t n)
{
    const ead_v4 tiny = {2.2250738585072014e-308, 2.2250738585072014e-308,
                         2.2250738585072014e-308, 2.2250738585072014e-308};
    for (int64_t b = 0; b < n_blocks; b++)
        for (int64_t k0 = 0; k0 < n; k0 += 8) {
            ead_v4 v[2], r[2];
            EAD_UNROLL for (int h = 0; h < 2; h++)
            {
                memcpy(&v[h], __builtin_assume_aligned(in + b * KC + k0 + 4 * h, 32),
                       sizeof(ead_v4));
                r[h] = v[h];
            }
            for (int bit = top - 1; bit >= 0; bit--) {
                EAD_UNROLL for (int h = 0; h < 2; h++) r[h] *= r[h];
                if ((power >> bit) & 1)
                    EAD_UNROLL for (int h = 0; h < 2; h++) r[h] *= v[h];
            }
            EAD_UNROLL for (int h = 0; h < 2; h++) /* integer mask, as ead_exp's flush */
                r[h] = (ead_v4)((ead_i4)r[h] & (ead_i4)(r[h] >= tiny));
            for (int64_t m = 0; m < n_mono; m++)
                EAD_UNROLL for (int h = 0; h < 2; h++)
                {
                    ead_v4 x;
                    memcpy(&x, __builtin_assume_aligned(w + m * KC + k0 + 4 * h, 32),
                           sizeof(ead_v4));
                    x *= r[h];
                    double *out = wa + (m * n_blocks + b) * KC + k0 + 4 * h;
                    memcpy(__builtin_assume_aligned(out, 32), &x, sizeof(ead_v4));
                }
        }
}
#else
EAD_INLINE void power_block_weights(double *restrict wa, const double *restrict w,
                                    const double *restrict in, int64_t power, int top,
                                    int64_t n_mono, int64_t n_blocks, int64_t n)
{
    for (int64_t b = 0; b < n_blocks; b++)
        for (int64_t k0 = 0; k0 < n; k0 += 8) {
            double v[8], r[8];
            for (int j = 0; j < 8; j++)
                v[j] = r[j] = in[b * KC + k0 + j];
            for (int bit = top - 1; bit >= 0; bit--) {
                const int odd = (power >> bit) & 1;
                for (int j = 0; j < 8; j++)
                    r[j] *= r[j];
                if (odd)
                    for (int j = 0; j < 8; j++)
                        r[j] *= v[j];
            }
            for (int j = 0; j < 8; j++) { /* integer mask: vectorises under -ftrapping-math */
                const uint64_t keep = (uint64_t)0 - (uint64_t)(r[j] >= 2.2250738585072014e-308);
                uint64_t bits;
                memcpy(&bits, &r[j], sizeof bits);
                bits &= keep;
                memcpy(&r[j], &bits, sizeof bits);
            }
            for (int64_t m = 0; m < n_mono; m++)
                for (int j = 0; j < 8; j++)
                    wa[(m * n_blocks + b) * KC + k0 + j] = w[m * KC + k0 + j] * r[j];
        }
}
#endif

/* One chunk of n <= KC edges (weights and distances in w, padded to n_pad), one eta: add its
 * terms to rho[m][ia][.] (T for a block eta). */
EAD_INLINE void chunk_eta(const ead_args *restrict a, const ead_work *restrict w, int64_t ia,
                          int64_t n, int64_t n_pad, int first, int vector_width)
{
    const double eta = a->etas[ia];
    const int64_t length = a->shape[SHAPE * ia], n_blocks = a->shape[SHAPE * ia + 1];
    const int64_t offset = a->shape[SHAPE * ia + 2], source = a->shape[SHAPE * ia + 3];
    const int64_t m_stride = a->n_etas * w->g_pad, rs_pad = w->rs_pad;
    double *rho = w->rho + ia * w->g_pad;
    if (length == 0) { /* direct: one exp per shift, then rho[m] += sum_k w[m][k] g[k] */
        for (int64_t k = 0; k < n; k++) {
            double *g = w->p + k * rs_pad;
            direct_gaussians(g, a->rs, w->d[k], eta, a->n_rs);
            for (int64_t s = a->n_rs; s < rs_pad; s++)
                g[s] = 0.0;
        }
        contract(rho, m_stride, 1, 0, w->w, w->p, rs_pad, n, first, a->n_mono, rs_pad,
                 vector_width);
        return;
    }
    /* block recurrence, scaled by S_bt after the sum over neighbours (in ead_body) */
    double *restrict x = w->x + w->x_rows[ia] * KC;
    const int64_t first_exp = source >= 0 ? n_blocks : 0; /* a derived eta: p (and p^-h) only */
    chunk_exponents(x, w->d, a->anchors + ia * a->anchor_stride,
                    a->lifts + ia * a->anchor_stride, eta, a->step, offset, first_exp, n_blocks,
                    n_pad);
    const int64_t n_exps = n_blocks + 1 + (offset != 0);
    for (int64_t b = first_exp; b < n_exps; b++)
        ead_exp_inplace(x + b * KC, n_pad);
    const double *restrict bases = x + n_blocks * KC, *restrict starts = bases + KC;
    chunk_powers(w->p, bases, offset != 0 ? starts : NULL, length, n_pad, vector_width);
    if (source >= 0) { /* A_b = (A_b of the source eta)^n: the same anchors, n times the
                        * exponent; straight into the block weights */
        const int64_t power = a->shape[SHAPE * ia + 4];
        power_block_weights(w->wa, w->w, w->x + w->x_rows[source] * KC, power, top_bit(power),
                            a->n_mono, n_blocks, n_pad);
    } else
        chunk_block_weights(w->wa, w->w, x, a->n_mono, n_blocks, n_pad);
    contract(rho, m_stride, n_blocks, length, w->wa, w->p, length, n, first,
             a->n_mono * n_blocks, length, vector_width);
}

/* sin(v) for |v| <= pi/2: Taylor polynomial to v^23 (truncation < 1e-20), ~1 ulp relative. */
EAD_INLINE double ead_sin(double v)
{
    const double v2 = v * v;
    double s = -3.8681701706306840377e-23; /* -1/23! */
    s = s * v2 + 1.9572941063391261231e-20;
    s = s * v2 - 8.2206352466243297170e-18;
    s = s * v2 + 2.8114572543455207632e-15;
    s = s * v2 - 7.6471637318198164759e-13;
    s = s * v2 + 1.6059043836821614599e-10;
    s = s * v2 - 2.5052108385441718775e-08;
    s = s * v2 + 2.7557319223985890653e-06;
    s = s * v2 - 1.9841269841269841270e-04;
    s = s * v2 + 8.3333333333333333333e-03;
    s = s * v2 - 1.6666666666666666667e-01;
    return v + v * (v2 * s);
}

/* The chunk's edges c0 .. c0 + n - 1 (n <= KC; slots n .. n_pad - 1 get weight 0): distances
 * w->d[k] and monomial weights w->w[m][k] = Z_j f_c(d) x^lx y^ly z^lz, with
 * f_c = (cos(pi d / rc) + 1) / 2 = sin^2(pi (rc - d) / (2 rc)) (no cancellation near rc). */
EAD_INLINE void chunk_edges(const ead_args *restrict a, ead_work *restrict w, int64_t c0,
                            int64_t n, int64_t n_pad, const double *restrict pi)
{
    double *restrict d = w->d, *restrict zj = w->w, *restrict v = w->v;
    const double *cell = a->cell;
    for (int64_t k = 0; k < n_pad; k++) { /* gather (scalar) */
        const double dist = k < n ? a->dist[c0 + k] : -1.0;
        if (dist >= 0.0 && dist < a->rc) {
            const int64_t e = c0 + k, j = a->neighbour[e];
            const double s0 = (double)a->shift[3 * e], s1 = (double)a->shift[3 * e + 1],
                         s2 = (double)a->shift[3 * e + 2];
            zj[k] = (double)a->z[j];
            d[k] = dist;
            for (int c = 0; c < 3; c++)
                v[c * KC + k] = (a->pos[3 * j + c] - pi[c]) +
                                (s0 * cell[c] + s1 * cell[3 + c] + s2 * cell[6 + c]);
        } else { /* padding slot, or a distance outside [0, rc) (none in a list cut at rc; the
                  * plan's bounds assume d < rc): weight 0, a finite distance */
            zj[k] = 0.0;
            d[k] = 0.0;
            for (int c = 0; c < 3; c++)
                v[c * KC + k] = 0.0;
        }
    }
    const double half_pi_over_rc = 1.57079632679489661923 / a->rc;
    for (int64_t k = 0; k < n_pad; k++) {
        const double f = ead_sin((a->rc - d[k]) * half_pi_over_rc);
        zj[k] = zj[k] * (f * f);
    }
    for (int64_t m = 1; m < a->n_mono; m++) {
        const double *restrict source = w->w + a->rec[2 * (m - 1)] * KC;
        const double *restrict axis = v + a->rec[2 * (m - 1) + 1] * KC;
        double *restrict out = w->w + m * KC;
        for (int64_t k = 0; k < n_pad; k++)
            out[k] = source[k] * axis[k];
    }
}

/* o[k] = sum_m c[m] (scale[k] rho[m][k])^2 (rho[m] rows m_stride apart; no scale: rho[m][k]^2),
 * k < n: the terms in order of m, each square rounded before its multiply-add (the sums of
 * squaring the rows first and adding them after, bit for bit), summed in registers (one store
 * per k); 0 where every c[m] is 0. `terms` (n_mono entries) is scratch. */
EAD_INLINE void reduce_row(double *restrict o, const double *restrict rho, int64_t m_stride,
                           const double *restrict c, const double *restrict scale,
                           int64_t n_mono, int64_t n, int64_t *restrict terms)
{
    int64_t n_terms = 0;
    for (int64_t m = 0; m < n_mono; m++)
        if (c[m] != 0.0)
            terms[n_terms++] = m;
    if (n_terms == 0) {
        memset(o, 0, (size_t)n * sizeof(double));
        return;
    }
    int64_t k = 0;
#if EAD_HAVE_VECTORS
    for (; k + 4 <= n; k += 4) {
        ead_v4 s = {1.0, 1.0, 1.0, 1.0}, v;
        if (scale != NULL)
            memcpy(&s, scale + k, sizeof s);
        memcpy(&v, rho + terms[0] * m_stride + k, sizeof v);
        v = s * v; /* exact without scale */
        ead_v4 sq = v * v, sum = c[terms[0]] * sq + 0.0;
        for (int64_t j = 1; j < n_terms; j++) {
            memcpy(&v, rho + terms[j] * m_stride + k, sizeof v);
            v = s * v;
            sq = v * v;
            sum += c[terms[j]] * sq;
        }
        memcpy(o + k, &sum, sizeof sum);
    }
#endif
    for (; k < n; k++) {
        const double s = scale != NULL ? scale[k] : 1.0;
        double v = s * rho[terms[0] * m_stride + k], sq = v * v, sum = c[terms[0]] * sq + 0.0;
        for (int64_t j = 1; j < n_terms; j++) {
            v = s * rho[terms[j] * m_stride + k];
            sq = v * v;
            sum += c[terms[j]] * sq;
        }
        o[k] = sum;
    }
}

EAD_INLINE void ead_body(const ead_args *restrict a, ead_work *restrict w, int vector_width)
{
    const int64_t n_rs = a->n_rs, g_pad = w->g_pad, n_etas = a->n_etas, n_mono = a->n_mono;
    const int64_t n_features = a->n_l * n_etas * n_rs;
    int64_t e0 = 0;
    for (int64_t i = 0; i < a->n_atoms; i++) {
        int64_t e1 = e0;
        while (e1 < a->n_edges && a->centre[e1] == i)
            e1++;
        double *restrict row = a->out + i * n_features;
        if (e1 == e0) {
            memset(row, 0, (size_t)n_features * sizeof(double));
            continue;
        }
        const double *pi = a->pos + 3 * i;
        for (int64_t c0 = e0; c0 < e1; c0 += KC) {
            const int64_t n = e1 - c0 < KC ? e1 - c0 : KC, n_pad = (n + 7) & ~(int64_t)7;
            chunk_edges(a, w, c0, n, n_pad, pi);
            for (int64_t ia = 0; ia < n_etas; ia++)
                chunk_eta(a, w, ia, n, n_pad, c0 == e0, vector_width);
        }
        /* x[l][eta][k] = sum_m reduce[l][m] rho[m][eta][k]^2 (rho = S T for the block etas;
         * k < |Rs| only: T past |Rs| is never scaled), one pass per (l, eta) */
        for (int64_t l = 0; l < a->n_l; l++)
            for (int64_t ia = 0; ia < n_etas; ia++)
                reduce_row(row + (l * n_etas + ia) * n_rs, w->rho + ia * g_pad,
                           n_etas * g_pad, a->reduce + l * n_mono,
                           a->shape[SHAPE * ia] != 0 ? a->scale + ia * a->scale_stride : NULL,
                           n_mono, n_rs, w->terms);
        e0 = e1;
    }
}

static void ead_run_generic(const ead_args *a, ead_work *w) { ead_body(a, w, 2); }

#if EAD_X86_DISPATCH
__attribute__((target("avx2,fma"))) static void ead_run_avx2(const ead_args *a, ead_work *w)
{
    ead_body(a, w, 4);
}

__attribute__((target("avx512f,avx2,fma"))) static void ead_run_avx512(const ead_args *a,
                                                                        ead_work *w)
{
    ead_body(a, w, 8);
}
#endif

/* Instruction sets this CPU (and OS) supports, as a bit mask over ISA_*. */
static int supported_isas(void)
{
    int mask = 1 << ISA_GENERIC;
#if EAD_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        mask |= 1 << ISA_AVX2;
    if ((mask & (1 << ISA_AVX2)) && __builtin_cpu_supports("avx512f"))
        mask |= 1 << ISA_AVX512;
#endif
    return mask;
}

static int best_isa(int mask)
{
    for (int isa = ISA_COUNT - 1; isa > 0; isa--)
        if (mask & (1 << isa))
            return isa;
    return ISA_GENERIC;
}

/* Checks the edges (indices in range, centres ascending) and runs the kernel. */
static int ead_run(const ead_args *a, int isa)
{
    for (int64_t e = 0; e < a->n_edges; e++) {
        const int64_t i = a->centre[e], j = a->neighbour[e];
        if (i < 0 || i >= a->n_atoms || j < 0 || j >= a->n_atoms)
            return EAD_BAD_INDEX;
        if (e > 0 && i < a->centre[e - 1])
            return EAD_UNSORTED;
    }
    ead_work w;
    int64_t max_length = 8, max_blocks = 1, x_rows = 0;
    w.x_rows = malloc((size_t)(a->n_etas + a->n_mono) * sizeof(int64_t));
    if (w.x_rows == NULL)
        return EAD_NO_MEMORY;
    w.terms = w.x_rows + a->n_etas;
    w.rs_pad = (a->n_rs + 7) & ~(int64_t)7;
    w.g_pad = w.rs_pad;
    for (int64_t ia = 0; ia < a->n_etas; ia++) {
        const int64_t length = a->shape[SHAPE * ia], n_blocks = a->shape[SHAPE * ia + 1];
        w.x_rows[ia] = x_rows;
        x_rows += n_blocks + 2;
        if (length > max_length)
            max_length = length;
        if (n_blocks > max_blocks)
            max_blocks = n_blocks;
        if (length * n_blocks > w.g_pad)
            w.g_pad = length * n_blocks;
    }
    w.g_pad = (w.g_pad + 7) & ~(int64_t)7;
    const int64_t p_cols = max_length > w.rs_pad ? max_length : w.rs_pad;
    enum { N_WORK = 7 };
    const int64_t sizes[N_WORK] = {
        a->n_mono * a->n_etas * w.g_pad, KC, 3 * KC, a->n_mono * KC, x_rows * KC,
        a->n_mono * max_blocks * KC,     KC * p_cols};
    double **targets[N_WORK] = {&w.rho, &w.d, &w.v, &w.w, &w.x, &w.wa, &w.p};
    int64_t total = 0;
    for (int k = 0; k < N_WORK; k++)
        total += (sizes[k] + 7) & ~(int64_t)7; /* every array 64-byte aligned */
    w.block = malloc((size_t)total * sizeof(double) + ALIGN);
    if (w.block == NULL) {
        free(w.x_rows);
        return EAD_NO_MEMORY;
    }
    double *cursor = (double *)(((uintptr_t)w.block + ALIGN - 1) & ~(uintptr_t)(ALIGN - 1));
    for (int k = 0; k < N_WORK; k++) {
        *targets[k] = cursor;
        cursor += (sizes[k] + 7) & ~(int64_t)7;
    }
    switch (isa) {
#if EAD_X86_DISPATCH
    case ISA_AVX512:
        ead_run_avx512(a, &w);
        break;
    case ISA_AVX2:
        ead_run_avx2(a, &w);
        break;
#endif
    default:
        ead_run_generic(a, &w);
    }
    free(w.block);
    free(w.x_rows);
    return EAD_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* Python interface                                                                             */
/* ------------------------------------------------------------------------------------------ */

static int g_isa_mask = 1;

/* A C-contiguous buffer of 8-byte items of kind 'i' (signed integer) or 'f' (double). */
static int get_buffer(PyObject *obj, Py_buffer *view, char kind, int writable, const char *name)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) != 0)
        return -1;
    const char *f = view->format ? view->format : "B";
    while (*f == '<' || *f == '=' || *f == '@')
        f++;
    int ok = view->itemsize == 8 && f[1] == '\0' &&
             (kind == 'f' ? *f == 'd' : (*f == 'l' || *f == 'q'));
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "%s: expected a contiguous %s array", name,
                     kind == 'f' ? "float64" : "int64");
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

#define N_BUFFERS 9

PyDoc_STRVAR(featurize_doc,
             "featurize(z, pos, cell, edge_index, edge_shift, edge_dist, iplan, dplan, out, isa)\n"
             "\n"
             "EAD of every atom into `out` (N, (L+1)|eta||Rs|) float64, C-contiguous. Edges must\n"
             "be sorted by centre (edge_index[1] ascending); returns 0, or 1 when they are not\n"
             "(nothing written). isa: -1 = best supported, else an index into ALL_ISAS.\n"
             "iplan (int64) = [L+1, M, |eta|, |Rs|, scale_stride, anchor_stride,\n"
             "(B, blocks, offset) per eta,\n"
             "(source, axis) per monomial 1..M-1]; dplan (float64) = [rc, Delta, etas, rs,\n"
             "reduce ((L+1) x M), scale (|eta| x scale_stride), anchors and lifts (each\n"
             "|eta| x anchor_stride)]. Built by ead_kernel.py.");

static PyObject *py_featurize(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *objs[N_BUFFERS];
    int isa;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOi", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &objs[5], &objs[6], &objs[7], &objs[8], &isa))
        return NULL;
    static const char kinds[N_BUFFERS] = {'i', 'f', 'f', 'i', 'i', 'f', 'i', 'f', 'f'};
    static const char *const names[N_BUFFERS] = {
        "z", "pos", "cell", "edge_index", "edge_shift", "edge_dist", "iplan", "dplan", "out"};
    Py_buffer views[N_BUFFERS];
    int got = 0;
    PyObject *result = NULL;
    for (; got < N_BUFFERS; got++)
        if (get_buffer(objs[got], &views[got], kinds[got], got == N_BUFFERS - 1, names[got]))
            goto done;
    Py_ssize_t len[N_BUFFERS];
    for (int k = 0; k < N_BUFFERS; k++)
        len[k] = views[k].len / 8;
    const int64_t *ip = (const int64_t *)views[6].buf;
    const double *dp = (const double *)views[7].buf;
    ead_args a;
    a.n_atoms = len[0];
    a.n_edges = len[5];
    if (len[6] < 6)
        goto bad_plan;
    a.n_l = ip[0];
    a.n_mono = ip[1];
    a.n_etas = ip[2];
    a.n_rs = ip[3];
    a.scale_stride = ip[4];
    a.anchor_stride = ip[5];
    if (a.n_l < 1 || a.n_mono < 1 || a.n_etas < 1 || a.n_rs < 1 || a.scale_stride < a.n_rs ||
        a.n_mono > 100000 || a.n_etas > 100000 || a.n_rs > 100000 || a.scale_stride > 1000000 ||
        a.anchor_stride < 1 || a.anchor_stride > a.n_rs ||
        len[6] != 6 + SHAPE * a.n_etas + 2 * (a.n_mono - 1) ||
        len[7] != 2 + a.n_etas + a.n_rs + a.n_l * a.n_mono + a.n_etas * a.scale_stride +
                       2 * a.n_etas * a.anchor_stride)
        goto bad_plan;
    a.shape = ip + 6;
    a.rec = ip + 6 + SHAPE * a.n_etas;
    for (int64_t ia = 0; ia < a.n_etas; ia++) {
        const int64_t length = a.shape[SHAPE * ia], n_blocks = a.shape[SHAPE * ia + 1];
        const int64_t offset = a.shape[SHAPE * ia + 2], source = a.shape[SHAPE * ia + 3];
        const int64_t power = a.shape[SHAPE * ia + 4];
        if (source < -1 || source >= ia ||
            (source >= 0 && (power < 2 || power > 64 || length == 0 ||
                             a.shape[SHAPE * source + 3] != -1 ||
                             a.shape[SHAPE * source] != length ||
                             a.shape[SHAPE * source + 1] != n_blocks ||
                             a.shape[SHAPE * source + 2] != offset)))
            goto bad_plan;
        if (length < 0 || length > 64 || length % 8 != 0 || offset < 0 ||
            (length == 0 && offset != 0) || (length > 0 && offset >= length) ||
            (length > 0 && (n_blocks < 1 || n_blocks > a.anchor_stride ||
                                                         length * n_blocks < a.n_rs ||
                                                         length * n_blocks > a.scale_stride ||
                                                         (n_blocks - 1) * length >= a.n_rs)))
            goto bad_plan;
    }
    for (int64_t m = 1; m < a.n_mono; m++)
        if (a.rec[2 * (m - 1)] < 0 || a.rec[2 * (m - 1)] >= m || a.rec[2 * (m - 1) + 1] < 0 ||
            a.rec[2 * (m - 1) + 1] > 2)
            goto bad_plan;
    a.rc = dp[0];
    a.step = dp[1];
    a.etas = dp + 2;
    a.rs = a.etas + a.n_etas;
    a.reduce = a.rs + a.n_rs;
    a.scale = a.reduce + a.n_l * a.n_mono;
    a.anchors = a.scale + a.n_etas * a.scale_stride;
    a.lifts = a.anchors + a.n_etas * a.anchor_stride;
    if (len[1] != 3 * a.n_atoms || len[2] != 9 || len[3] != 2 * a.n_edges ||
        len[4] != 3 * a.n_edges || len[8] != a.n_atoms * a.n_l * a.n_etas * a.n_rs) {
        PyErr_SetString(PyExc_ValueError, "_ead_kernel.featurize: inconsistent array sizes");
        goto done;
    }
    a.z = (const int64_t *)views[0].buf;
    a.pos = (const double *)views[1].buf;
    a.cell = (const double *)views[2].buf;
    a.neighbour = (const int64_t *)views[3].buf;
    a.centre = a.neighbour + a.n_edges;
    a.shift = (const int64_t *)views[4].buf;
    a.dist = (const double *)views[5].buf;
    a.out = (double *)views[8].buf;
    if (isa < 0)
        isa = best_isa(g_isa_mask);
    if (isa >= ISA_COUNT || !(g_isa_mask & (1 << isa))) {
        PyErr_Format(PyExc_ValueError, "_ead_kernel.featurize: instruction set %d unsupported",
                     isa);
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = ead_run(&a, isa);
    Py_END_ALLOW_THREADS
    if (status == EAD_BAD_INDEX)
        PyErr_SetString(PyExc_ValueError, "_ead_kernel.featurize: edge index out of range");
    else if (status == EAD_NO_MEMORY)
        PyErr_NoMemory();
    else
        result = PyLong_FromLong(status);
    goto done;
bad_plan:
    PyErr_SetString(PyExc_ValueError, "_ead_kernel.featurize: malformed plan");
done:
    for (int k = 0; k < got; k++)
        PyBuffer_Release(&views[k]);
    return result;
}

PyDoc_STRVAR(isas_doc, "isas() -> names of the instruction-set variants this CPU runs (a subset\n"
                       "of ALL_ISAS, the best last).");

static PyObject *py_isas(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    PyObject *out = PyTuple_New(0);
    for (int isa = 0; isa < ISA_COUNT && out; isa++) {
        if (!(g_isa_mask & (1 << isa)))
            continue;
        PyObject *name = PyUnicode_FromString(isa_names[isa]);
        if (!name || _PyTuple_Resize(&out, PyTuple_GET_SIZE(out) + 1)) {
            Py_XDECREF(name);
            Py_XDECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, PyTuple_GET_SIZE(out) - 1, name);
    }
    return out;
}

static PyMethodDef methods[] = {
    {"featurize", py_featurize, METH_VARARGS, featurize_doc},
    {"isas", py_isas, METH_NOARGS, isas_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_ead_kernel", "Compiled EAD kernel (see ead_kernel.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__ead_kernel(void)
{
    g_isa_mask = supported_isas();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", EAD_KERNEL_ABI) ||
        PyModule_AddStringConstant(m, "SOURCE_HASH", EAD_SOURCE_HASH) ||
        PyModule_AddObject(m, "ALL_ISAS",
                           Py_BuildValue("(sss)", isa_names[0], isa_names[1], isa_names[2]))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
