/*
 * Compiled GMP kernel (optional): builder.descriptors._gmp_kernel.
 *
 * The Gaussian multipole features of every atom of one structure (definition, feature order,
 * per-term truncation radii and the plan's layout in builder/descriptors/gmp.py and
 * gmp_kernel.py). Plain C99 plus the CPython API (buffer protocol only, no NumPy headers); GCC
 * target attributes where the compiler has them. Single-threaded; the GIL is released.
 *
 * Edges are taken in the order given, in chunks of EB = 8 consecutive edges of one centre
 * (a chunk ends early where the centre changes, so any edge order is correct; grouped by centre
 * is fastest). Edges without any Gaussian term inside its radius are skipped. Per chunk:
 *   1. the (edge, term) pairs: each edge's neighbour element has its terms (slot = sigma or the
 *      density, Gaussian g) sorted by decreasing radius, so the terms an edge lies within are a
 *      prefix, scanned while d^2 < r_t^2; their exponents -decay_t d^2 go into one buffer, whose
 *      exps are evaluated in one vectorisable loop (gmp_exp, ~1 ulp);
 *   2. the radial weights W[slot][n][q] = sum over the pairs of edge q of weight_t[n] exp(...)
 *      (weight_t[n] = A B (pi/gamma)^(3/2) lambda^n; the density slot: B at n = 0);
 *   3. the order-0 and density sums, and for orders n >= 1 the monomials x^a y^b z^c of the
 *      edge vectors d = pos[j] + shift @ cell - pos[i] (|(a, b, c)| = n, in gmp._components
 *      order) and the moments acc[i][sigma][m] += sum_q W[sigma][n][q] monomial_m[q]
 *      (8-wide inner loops).
 * Per atom at the end: the centre's own d = 0 term is added to the order-0 and density sums;
 * mu_k = sum_m H_n[k][m] acc[m] with the Maxwell-Cartesian coefficients H_n, and
 * G = sqrt(sum_k w_k mu_k^2) with the invariant weights n!/(kx! ky! kz!).
 *
 * Instruction sets: on x86-64 with GCC/Clang the body is compiled for the baseline (SSE2) and,
 * under __attribute__((target("avx2,fma"))), for AVX2 + FMA, picked at run time with
 * __builtin_cpu_supports; the module itself is built with portable flags (no -march).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Bumped whenever the Python <-> C calling convention changes (checked by gmp_kernel.py). */
#define GMP_KERNEL_ABI 1

#ifndef GMP_SOURCE_HASH /* sha256 of this file, set by setup.py (gmp_kernel.py detects stale builds) */
#define GMP_SOURCE_HASH ""
#endif

#define EB 8          /* edges per chunk */
#define MAX_ORDER 4   /* gmp.MAX_ORDER */
#define MAX_MONO 34   /* monomials of degrees 1 ... 4: 3 + 6 + 10 + 15 */

#if defined(__GNUC__) || defined(__clang__)
#define GMP_INLINE static inline __attribute__((always_inline))
#else
#define GMP_INLINE static inline
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define GMP_X86_DISPATCH 1
#else
#define GMP_X86_DISPATCH 0
#endif

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_COUNT = 2 };
static const char *const isa_names[ISA_COUNT] = {"generic", "avx2"};

enum { GMP_OK = 0, GMP_BAD_INDEX = 2, GMP_NO_MEMORY = 3 };

typedef struct {
    /* structure */
    int64_t n_atoms, n_edges;
    const int64_t *rank;      /* (N,) index of each atom's element in the plan's elements */
    const double *pos;        /* (N, 3) */
    const double *cell;       /* (3, 3) rows = lattice vectors */
    const int64_t *neighbour; /* (E,) edge_index[0] */
    const int64_t *centre;    /* (E,) edge_index[1] */
    const int64_t *shift;     /* (E, 3) */
    const double *dist;       /* (E,) */
    int periodic;             /* 0: only zero-shift edges (the finite cluster) */
    /* plan */
    int64_t n_sigma, with_density, has_order0, max_order, n_ranks, n_terms, n_requested;
    int64_t slots, layers, n_mono, tmax; /* n_sigma + with_density, max_order + 1, ... */
    const int64_t *requested;  /* (n_requested,) orders >= 1 to output, increasing */
    const int64_t *term_start; /* (n_ranks + 1,) each element's terms */
    const int64_t *term_slot;  /* (n_terms,) */
    const double *terms;       /* (n_terms, 2 + layers): r^2, -decay, weight[0 .. layers-1] */
    const double *self;        /* (n_ranks, slots): the centre's own d = 0 term */
    const double *harmonics;   /* per order n = 1 .. max_order: (K_n, K_n) row-major */
    const double *inv_weights; /* per order n = 1 .. max_order: (K_n,) */
    /* output */
    int64_t n_features;
    double *out; /* (N, n_features) */
} gmp_args;

typedef struct {
    double *acc;      /* (N, n_sigma, 1 + n_mono): order-0 sums, then moments */
    double *dens;     /* (N,) density sums */
    double *weights;  /* (slots, layers, EB) */
    double *exps;     /* (EB * tmax,) exponents, then exps */
    int64_t *pair;    /* (EB * tmax,) term * EB + q of each pair */
    void *block;
} gmp_work;

/* ------------------------------------------------------------------------------------------ */
/* exp: branch-free, vectorisable                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * exp(x) for -1e15 < x <= 709, 0 for x < -708 (every term evaluated lies within its truncation
 * radius, so its exponent is far above -708). Cody-Waite reduction x = k ln2 + r,
 * |r| <= ln2/2, Taylor polynomial of degree 13 (truncation < 5e-18 relative), 2^k built in the
 * exponent bits: ~1 ulp.
 */
GMP_INLINE double gmp_exp(double x)
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
    /* 2^k from the low 12 bits of ki, zeroed below -708 by an integer mask (no branch) */
    const uint64_t keep = (uint64_t)0 - (uint64_t)(x >= -708.0);
    const uint64_t bits = ((ki + 1023u) << 52) & keep;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    return q * scale;
}

/* ------------------------------------------------------------------------------------------ */
/* The kernel body, compiled once per instruction set                                           */
/* ------------------------------------------------------------------------------------------ */

/* Monomial exponents of degrees 1 .. max_order in gmp._components order (kx descending, then
 * ky descending); returns their count. */
static int64_t monomial_exponents(int64_t max_order, int expo[MAX_MONO][3], int degree[MAX_MONO])
{
    int64_t m = 0;
    for (int n = 1; n <= max_order; n++)
        for (int a = n; a >= 0; a--)
            for (int b = n - a; b >= 0; b--) {
                expo[m][0] = a;
                expo[m][1] = b;
                expo[m][2] = n - a - b;
                degree[m] = n;
                m++;
            }
    return m;
}

/* The chunk's contributions (q < count edges of centre i, all with >= 1 term) into the
 * accumulators. vec[axis][q]: edge vectors (0 in padding); the chunk's n_pairs (edge, term)
 * pairs: w->pair[p] = term * EB + q, their exponents in w->exps. */
GMP_INLINE void flush_chunk(const gmp_args *a, gmp_work *w, int64_t i, int64_t n_pairs,
                            const double vec[3][EB], const int expo[MAX_MONO][3],
                            const int degree[MAX_MONO])
{
    const int64_t layers = a->layers, slots = a->slots, n_sigma = a->n_sigma;
    const int64_t stride = 2 + layers;
    double *restrict ex = w->exps;
    for (int64_t p = 0; p < n_pairs; p++)
        ex[p] = gmp_exp(ex[p]);
    double *restrict weights = w->weights; /* [slot][layer][q] */
    memset(weights, 0, (size_t)(slots * layers * EB) * sizeof(double));
    for (int64_t p = 0; p < n_pairs; p++) {
        const int64_t t = w->pair[p] / EB, q = w->pair[p] % EB;
        const double *restrict row = a->terms + t * stride + 2;
        double *restrict target = weights + a->term_slot[t] * layers * EB + q;
        const double v = ex[p];
        for (int64_t n = 0; n < layers; n++)
            target[n * EB] += row[n] * v;
    }
    if (a->with_density) {
        const double *restrict wd = weights + n_sigma * layers * EB;
        double s = 0.0;
        for (int q = 0; q < EB; q++)
            s += wd[q];
        w->dens[i] += s;
    }
    const int64_t acc_stride = 1 + a->n_mono;
    double *restrict acc = w->acc + i * n_sigma * acc_stride;
    for (int64_t s = 0; s < n_sigma; s++) {
        const double *restrict w0 = weights + s * layers * EB;
        double sum = 0.0;
        for (int q = 0; q < EB; q++)
            sum += w0[q];
        acc[s * acc_stride] += sum;
    }
    if (a->max_order < 1)
        return;
    /* powers[axis][p][q] = vec[axis][q]^p, p <= max_order */
    double powers[3][MAX_ORDER + 1][EB];
    for (int axis = 0; axis < 3; axis++) {
        for (int q = 0; q < EB; q++) {
            powers[axis][0][q] = 1.0;
            powers[axis][1][q] = vec[axis][q];
        }
        for (int64_t p = 2; p <= a->max_order; p++)
            for (int q = 0; q < EB; q++)
                powers[axis][p][q] = powers[axis][p - 1][q] * vec[axis][q];
    }
    double mono[MAX_MONO][EB];
    for (int64_t m = 0; m < a->n_mono; m++) {
        const double *restrict px = powers[0][expo[m][0]], *restrict py = powers[1][expo[m][1]],
                               *restrict pz = powers[2][expo[m][2]];
        for (int q = 0; q < EB; q++)
            mono[m][q] = px[q] * py[q] * pz[q];
    }
    for (int64_t s = 0; s < n_sigma; s++) {
        const double *restrict ws = weights + s * layers * EB;
        double *restrict as = acc + s * acc_stride + 1;
        for (int64_t m = 0; m < a->n_mono; m++) {
            const double *restrict wn = ws + degree[m] * EB;
            double sum = 0.0;
            for (int q = 0; q < EB; q++)
                sum += wn[q] * mono[m][q];
            as[m] += sum;
        }
    }
}

/* Invariants of every atom from the accumulators into out. */
GMP_INLINE void finalise(const gmp_args *a, const gmp_work *w)
{
    const int64_t n_sigma = a->n_sigma, slots = a->slots, acc_stride = 1 + a->n_mono;
    for (int64_t i = 0; i < a->n_atoms; i++) {
        double *restrict out = a->out + i * a->n_features;
        const double *restrict self = a->self + a->rank[i] * slots;
        const double *restrict acc = w->acc + i * n_sigma * acc_stride;
        int64_t col = 0;
        if (a->with_density)
            out[col++] = fabs(w->dens[i] + self[n_sigma]);
        if (a->has_order0)
            for (int64_t s = 0; s < n_sigma; s++)
                out[col++] = fabs(acc[s * acc_stride] + self[s]);
        for (int64_t r = 0; r < a->n_requested; r++) {
            const int64_t order = a->requested[r];
            int64_t offset = 0, h_offset = 0; /* monomials and harmonics of lower orders */
            for (int64_t n = 1; n < order; n++) {
                const int64_t k = (n + 1) * (n + 2) / 2;
                offset += k;
                h_offset += k * k;
            }
            const int64_t k_n = (order + 1) * (order + 2) / 2;
            const double *restrict h = a->harmonics + h_offset;
            const double *restrict iw = a->inv_weights + offset;
            for (int64_t s = 0; s < n_sigma; s++) {
                const double *restrict moment = acc + s * acc_stride + 1 + offset;
                double total = 0.0;
                for (int64_t k = 0; k < k_n; k++) {
                    double mu = 0.0;
                    for (int64_t m = 0; m < k_n; m++)
                        mu += h[k * k_n + m] * moment[m];
                    total += iw[k] * mu * mu;
                }
                out[col++] = sqrt(total);
            }
        }
    }
}

GMP_INLINE void gmp_body(const gmp_args *a, gmp_work *w)
{
    int expo[MAX_MONO][3], degree[MAX_MONO];
    monomial_exponents(a->max_order, expo, degree);
    const int64_t stride = 2 + a->layers;
    const double *cell = a->cell;
    double vec[3][EB];
    int count = 0;
    int64_t n_pairs = 0, chunk_centre = -1;
    for (int64_t e = 0; e < a->n_edges; e++) {
        const int64_t *sh = a->shift + 3 * e;
        if (!a->periodic && (sh[0] | sh[1] | sh[2]))
            continue;
        const int64_t j = a->neighbour[e], i = a->centre[e];
        const double dd = a->dist[e] * a->dist[e];
        const int64_t r = a->rank[j];
        int64_t t = a->term_start[r];
        const int64_t end = a->term_start[r + 1];
        if (t == end || !(dd < a->terms[t * stride]))
            continue; /* beyond every term's radius */
        if (count == EB || (count > 0 && i != chunk_centre)) {
            for (int q = count; q < EB; q++)
                vec[0][q] = vec[1][q] = vec[2][q] = 0.0;
            flush_chunk(a, w, chunk_centre, n_pairs, (const double(*)[EB])vec, expo, degree);
            count = 0;
            n_pairs = 0;
        }
        chunk_centre = i;
        const double s0 = (double)sh[0], s1 = (double)sh[1], s2 = (double)sh[2];
        for (int axis = 0; axis < 3; axis++)
            vec[axis][count] = a->pos[3 * j + axis] + s0 * cell[axis] + s1 * cell[3 + axis] +
                               s2 * cell[6 + axis] - a->pos[3 * i + axis];
        for (; t < end && dd < a->terms[t * stride]; t++) {
            w->exps[n_pairs] = a->terms[t * stride + 1] * dd;
            w->pair[n_pairs] = t * EB + count;
            n_pairs++;
        }
        count++;
    }
    if (count > 0) {
        for (int q = count; q < EB; q++)
            vec[0][q] = vec[1][q] = vec[2][q] = 0.0;
        flush_chunk(a, w, chunk_centre, n_pairs, (const double(*)[EB])vec, expo, degree);
    }
    finalise(a, w);
}

static void gmp_run_generic(const gmp_args *a, gmp_work *w) { gmp_body(a, w); }

#if GMP_X86_DISPATCH
__attribute__((target("avx2,fma"))) static void gmp_run_avx2(const gmp_args *a, gmp_work *w)
{
    gmp_body(a, w);
}
#endif

static int supported_isas(void)
{
    int mask = 1 << ISA_GENERIC;
#if GMP_X86_DISPATCH
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        mask |= 1 << ISA_AVX2;
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

/* Checks the indices and runs the kernel. */
static int gmp_run(const gmp_args *a, int isa)
{
    for (int64_t e = 0; e < a->n_edges; e++) {
        const int64_t i = a->centre[e], j = a->neighbour[e];
        if (i < 0 || i >= a->n_atoms || j < 0 || j >= a->n_atoms)
            return GMP_BAD_INDEX;
    }
    for (int64_t i = 0; i < a->n_atoms; i++)
        if (a->rank[i] < 0 || a->rank[i] >= a->n_ranks)
            return GMP_BAD_INDEX;
    gmp_work w;
    const size_t n_acc = (size_t)(a->n_atoms * a->n_sigma * (1 + a->n_mono));
    const size_t n_weights = (size_t)(a->slots * a->layers * EB);
    const size_t n_buffer = (size_t)(EB * (a->tmax > 0 ? a->tmax : 1));
    const size_t n_doubles = n_acc + (size_t)a->n_atoms + n_weights + n_buffer;
    w.block = calloc(n_doubles * sizeof(double) + n_buffer * sizeof(int64_t), 1);
    if (w.block == NULL)
        return GMP_NO_MEMORY;
    w.acc = (double *)w.block;
    w.dens = w.acc + n_acc;
    w.weights = w.dens + a->n_atoms;
    w.exps = w.weights + n_weights;
    w.pair = (int64_t *)(w.exps + n_buffer);
    switch (isa) {
#if GMP_X86_DISPATCH
    case ISA_AVX2:
        gmp_run_avx2(a, &w);
        break;
#endif
    default:
        gmp_run_generic(a, &w);
    }
    free(w.block);
    return GMP_OK;
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
             "featurize(rank, pos, cell, edge_index, edge_shift, edge_dist, iplan, dplan, out,\n"
             "          periodic, isa)\n"
             "\n"
             "GMP features of every atom into `out` (N, d) float64, C-contiguous; edges in any\n"
             "order. rank: (N,) int64 index of each atom's element in the plan. isa: -1 = best\n"
             "supported, else an index into ALL_ISAS. iplan (int64) = [n_sigma, with_density,\n"
             "has_order0, max_order, n_ranks, n_terms, n_requested, requested orders >= 1...,\n"
             "term_start (n_ranks + 1)..., term_slot (n_terms)...]; dplan (float64) = [terms\n"
             "(n_terms x (2 + max_order + 1): r^2, -decay, weights), self (n_ranks x slots),\n"
             "harmonics per order 1..max_order (K_n x K_n), invariant weights per order (K_n)].\n"
             "Built by gmp_kernel.py.");

static PyObject *py_featurize(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *objs[N_BUFFERS];
    int periodic, isa;
    if (!PyArg_ParseTuple(args, "OOOOOOOOOpi", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4],
                          &objs[5], &objs[6], &objs[7], &objs[8], &periodic, &isa))
        return NULL;
    static const char kinds[N_BUFFERS] = {'i', 'f', 'f', 'i', 'i', 'f', 'i', 'f', 'f'};
    static const char *const names[N_BUFFERS] = {
        "rank", "pos", "cell", "edge_index", "edge_shift", "edge_dist", "iplan", "dplan", "out"};
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
    gmp_args a;
    a.n_atoms = len[0];
    a.n_edges = len[5];
    a.periodic = periodic;
    if (len[6] < 7)
        goto bad_plan;
    a.n_sigma = ip[0];
    a.with_density = ip[1];
    a.has_order0 = ip[2];
    a.max_order = ip[3];
    a.n_ranks = ip[4];
    a.n_terms = ip[5];
    a.n_requested = ip[6];
    if (a.n_sigma < 0 || a.n_sigma > 100000 || a.with_density < 0 || a.with_density > 1 ||
        a.has_order0 < 0 || a.has_order0 > 1 || a.max_order < -1 || a.max_order > MAX_ORDER ||
        (a.max_order >= 0 && a.n_sigma < 1) || a.n_ranks < 1 || a.n_ranks > 100000 ||
        a.n_terms < 0 || a.n_terms > 100000000 || a.n_requested < 0 ||
        a.n_requested > MAX_ORDER || len[6] != 7 + a.n_requested + a.n_ranks + 1 + a.n_terms)
        goto bad_plan;
    a.requested = ip + 7;
    a.term_start = a.requested + a.n_requested;
    a.term_slot = a.term_start + a.n_ranks + 1;
    a.slots = a.n_sigma + a.with_density;
    a.layers = (a.max_order > 0 ? a.max_order : 0) + 1;
    a.n_mono = 0;
    int64_t n_harmonics = 0;
    for (int64_t n = 1; n <= a.max_order; n++) {
        const int64_t k = (n + 1) * (n + 2) / 2;
        a.n_mono += k;
        n_harmonics += k * k;
    }
    for (int64_t r = 0; r < a.n_requested; r++)
        if (a.requested[r] < 1 || a.requested[r] > a.max_order ||
            (r > 0 && a.requested[r] <= a.requested[r - 1]))
            goto bad_plan;
    if (a.term_start[0] != 0 || a.term_start[a.n_ranks] != a.n_terms)
        goto bad_plan;
    a.tmax = 0;
    for (int64_t r = 0; r < a.n_ranks; r++) {
        const int64_t size = a.term_start[r + 1] - a.term_start[r];
        if (size < 0)
            goto bad_plan;
        if (size > a.tmax)
            a.tmax = size;
    }
    for (int64_t t = 0; t < a.n_terms; t++)
        if (a.term_slot[t] < 0 || a.term_slot[t] >= a.slots)
            goto bad_plan;
    if (len[7] != a.n_terms * (2 + a.layers) + a.n_ranks * a.slots + n_harmonics + a.n_mono)
        goto bad_plan;
    a.terms = dp;
    a.self = a.terms + a.n_terms * (2 + a.layers);
    a.harmonics = a.self + a.n_ranks * a.slots;
    a.inv_weights = a.harmonics + n_harmonics;
    a.n_features = a.with_density + a.n_sigma * (a.has_order0 + a.n_requested);
    if (len[1] != 3 * a.n_atoms || len[2] != 9 || len[3] != 2 * a.n_edges ||
        len[4] != 3 * a.n_edges || len[8] != a.n_atoms * a.n_features) {
        PyErr_SetString(PyExc_ValueError, "_gmp_kernel.featurize: inconsistent array sizes");
        goto done;
    }
    a.rank = (const int64_t *)views[0].buf;
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
        PyErr_Format(PyExc_ValueError, "_gmp_kernel.featurize: instruction set %d unsupported",
                     isa);
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = gmp_run(&a, isa);
    Py_END_ALLOW_THREADS
    if (status == GMP_BAD_INDEX)
        PyErr_SetString(PyExc_ValueError, "_gmp_kernel.featurize: atom index out of range");
    else if (status == GMP_NO_MEMORY)
        PyErr_NoMemory();
    else
        result = PyLong_FromLong(status);
    goto done;
bad_plan:
    PyErr_SetString(PyExc_ValueError, "_gmp_kernel.featurize: malformed plan");
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
    PyModuleDef_HEAD_INIT, "_gmp_kernel", "Compiled GMP kernel (see gmp_kernel.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__gmp_kernel(void)
{
    g_isa_mask = supported_isas();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", GMP_KERNEL_ABI) ||
        PyModule_AddStringConstant(m, "SOURCE_HASH", GMP_SOURCE_HASH) ||
        PyModule_AddObject(m, "ALL_ISAS", Py_BuildValue("(ss)", isa_names[0], isa_names[1]))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
