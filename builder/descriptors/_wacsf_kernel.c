/*
 * Compiled wACSF kernel (optional): builder.descriptors._wacsf_kernel.
 *
 * The weighted radial symmetry functions of every atom of one structure from its neighbour list
 * (definition and feature order in builder/descriptors/wacsf.py):
 *
 *     G[i][a * n_rs + k] = sum_j Z_j exp(-eta_a (d_ij - Rs_k)^2) f_c(d_ij),
 *     f_c(d) = (cos(pi d / rc) + 1) / 2,  summed over the edges with d_ij < rc.
 *
 * Plain C99 plus the CPython API (buffer protocol only, no NumPy headers); GCC target attributes
 * where the compiler has them. Single-threaded; the GIL is released.
 *
 * Edges are taken in the order given (any order is correct; grouped by centre keeps the
 * centre's row in L1), in chunks of WB: first f_c(d) = cos(pi d / (2 rc))^2 of the chunk's
 * edges in one vectorised loop (a polynomial, ~1 ulp), then per edge with d < rc the weight
 * w = Z_j f_c(d) and over the feature columns
 * (eta, Rs) in one vectorisable loop row[f] += w exp(-eta (d - Rs)^2) (the reference's operation
 * order; wacsf_exp, ~1 ulp). One exp per (edge, eta, Rs): the same terms as a term-by-term
 * loop, to ~1e-15 relative, with no plan beyond the two columns (f_c as cos^2 has no
 * cancellation near rc, unlike (cos + 1) / 2: see wacsf.py).
 *
 * Instruction sets: on x86-64 with GCC/Clang the body is compiled for the baseline (SSE2) and,
 * under __attribute__((target("avx2,fma"))), for AVX2 + FMA, picked at run time with
 * __builtin_cpu_supports; the module itself is built with portable flags (no -march).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The compiler may assume that no floating-point operation traps (the results are unchanged:
 * IEEE rounding is kept), so that the comparisons of wacsf_exp become vector selects. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

/* Bumped whenever the Python <-> C calling convention changes (checked by wacsf_kernel.py). */
#define WACSF_KERNEL_ABI 1

#ifndef WACSF_SOURCE_HASH /* sha256 of this file, set by setup.py (wacsf_kernel.py: stale builds) */
#define WACSF_SOURCE_HASH ""
#endif

#define WACSF_PI 3.14159265358979323846
#define WB 128 /* edges per chunk of cutoff weights */

#if defined(__GNUC__) || defined(__clang__)
#define WACSF_INLINE static inline __attribute__((always_inline))
#else
#define WACSF_INLINE static inline
#endif

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define WACSF_X86_DISPATCH 1
#else
#define WACSF_X86_DISPATCH 0
#endif

enum { ISA_GENERIC = 0, ISA_AVX2 = 1, ISA_COUNT = 2 };
static const char *const isa_names[ISA_COUNT] = {"generic", "avx2"};

enum { WACSF_OK = 0, WACSF_BAD_INDEX = 2 };

typedef struct {
    int64_t n_atoms, n_edges, n_features;
    const int64_t *z;         /* (N,) atomic numbers (the weights g(Z) = Z) */
    const int64_t *neighbour; /* (E,) edge_index[0] */
    const int64_t *centre;    /* (E,) edge_index[1] */
    const double *dist;       /* (E,) */
    const double *eta;        /* (F,) eta of each column, 1/A^2 */
    const double *rs;         /* (F,) Rs of each column, A */
    double rc;                /* cutoff, A */
    double *out;              /* (N, F), overwritten */
} wacsf_args;

/* ------------------------------------------------------------------------------------------ */
/* exp: branch-free, vectorisable                                                               */
/* ------------------------------------------------------------------------------------------ */

/*
 * exp(x) for x <= 709 (here x <= 0), 0 for x < -708: x is first clamped to -745 (so that no
 * intermediate overflows for any x, -inf included), Cody-Waite reduction x = k ln2 + r,
 * |r| <= ln2/2, Taylor polynomial of degree 13 (truncation < 5e-18 relative), 2^k built in the
 * exponent bits, zeroed below -708 by a select: ~1 ulp (as gmp_exp in _gmp_kernel.c). Clamp and
 * select are branch-free under no-trapping-math (see the pragma above), so the loop vectorises.
 */
WACSF_INLINE double wacsf_exp(double x)
{
    const double log2e = 1.4426950408889634074;
    const double ln2_hi = 6.93147180369123816490e-01; /* 32 significant bits: k ln2_hi exact */
    const double ln2_lo = 1.90821492927058770002e-10;
    const double shifter = 6755399441055744.0; /* 1.5 * 2^52: adding it rounds to an integer */
    x = x < -745.0 ? -745.0 : x;
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
    const uint64_t bits = (ki + 1023u) << 52;
    double scale;
    memcpy(&scale, &bits, sizeof scale);
    scale = x >= -708.0 ? scale : 0.0;
    return q * scale;
}

/* ------------------------------------------------------------------------------------------ */
/* The kernel body, compiled once per instruction set                                           */
/* ------------------------------------------------------------------------------------------ */

/* One edge (distance d, weight w = Z_j f_c(d)) into the row of its centre: one vectorisable
 * loop over the feature columns. */
WACSF_INLINE void add_edge(const wacsf_args *a, double *restrict row, const double d,
                           const double w)
{
    const double *restrict eta = a->eta, *restrict rs = a->rs;
    const int64_t n_features = a->n_features;
    for (int64_t f = 0; f < n_features; f++) {
        const double t = d - rs[f];
        row[f] += w * wacsf_exp(-eta[f] * (t * t));
    }
}

/*
 * cos(phi)^2 for 0 <= phi <= pi/2: f_c(d) = (cos(pi d / rc) + 1) / 2 = cos(pi d / (2 rc))^2,
 * without the reference's cancellation near the cutoff. Taylor polynomial of cos in phi^2 to
 * degree 22 (truncation < 1e-19 at pi/2), branch-free: the loop over edges vectorises.
 */
WACSF_INLINE double cutoff_cos2(double phi)
{
    const double u = phi * phi;
    double c = -8.89679139245057408e-22;
    c = c * u + 4.11031762331216484e-19;
    c = c * u + -1.56192069685862253e-16;
    c = c * u + 4.77947733238738525e-14;
    c = c * u + -1.14707455977297245e-11;
    c = c * u + 2.08767569878681002e-09;
    c = c * u + -2.75573192239858883e-07;
    c = c * u + 2.48015873015873016e-05;
    c = c * u + -1.38888888888888894e-03;
    c = c * u + 4.16666666666666644e-02;
    c = c * u + -5.00000000000000000e-01;
    c = c * u + 1.0;
    return c * c;
}

WACSF_INLINE void wacsf_body(const wacsf_args *a)
{
    const double half_scale = 0.5 * WACSF_PI / a->rc, rc = a->rc;
    double fc[WB];
    memset(a->out, 0, (size_t)(a->n_atoms * a->n_features) * sizeof(double));
    for (int64_t first = 0; first < a->n_edges; first += WB) {
        const int64_t count = a->n_edges - first < WB ? a->n_edges - first : WB;
        const double *restrict dist = a->dist + first;
        for (int64_t q = 0; q < count; q++) /* f_c of every edge of the chunk (vectorised) */
            fc[q] = cutoff_cos2(dist[q] * half_scale);
        for (int64_t q = 0; q < count; q++) {
            const double d = dist[q];
            if (!(d < rc))
                continue; /* beyond the cutoff (a wider list), or NaN */
            const int64_t e = first + q;
            const double w = (double)a->z[a->neighbour[e]] * fc[q];
            add_edge(a, a->out + a->centre[e] * a->n_features, d, w);
        }
    }
}

static void wacsf_run_generic(const wacsf_args *a) { wacsf_body(a); }

#if WACSF_X86_DISPATCH
__attribute__((target("avx2,fma"))) static void wacsf_run_avx2(const wacsf_args *a)
{
    wacsf_body(a);
}
#endif

static int supported_isas(void)
{
    int mask = 1 << ISA_GENERIC;
#if WACSF_X86_DISPATCH
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
static int wacsf_run(const wacsf_args *a, int isa)
{
    for (int64_t e = 0; e < a->n_edges; e++) {
        const int64_t i = a->centre[e], j = a->neighbour[e];
        if (i < 0 || i >= a->n_atoms || j < 0 || j >= a->n_atoms)
            return WACSF_BAD_INDEX;
    }
    switch (isa) {
#if WACSF_X86_DISPATCH
    case ISA_AVX2:
        wacsf_run_avx2(a);
        break;
#endif
    default:
        wacsf_run_generic(a);
    }
    return WACSF_OK;
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

#define N_BUFFERS 6

PyDoc_STRVAR(featurize_doc,
             "featurize(z, edge_index, edge_dist, eta, rs, rc, out, isa)\n"
             "\n"
             "wACSF of every atom into `out` (N, F) float64, C-contiguous (overwritten); edges in\n"
             "any order, those with edge_dist >= rc skipped. z: (N,) int64 atomic numbers;\n"
             "edge_index: (2, E) int64 (neighbour row, centre row); edge_dist: (E,) float64;\n"
             "eta, rs: (F,) float64 the (eta, Rs) of each column; isa: -1 = best supported, else\n"
             "an index into ALL_ISAS. Called by wacsf_kernel.py.");

static PyObject *py_featurize(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *objs[N_BUFFERS + 1];
    double rc;
    int isa;
    if (!PyArg_ParseTuple(args, "OOOOOdOi", &objs[0], &objs[1], &objs[2], &objs[3], &objs[4], &rc,
                          &objs[5], &isa))
        return NULL;
    static const char kinds[N_BUFFERS] = {'i', 'i', 'f', 'f', 'f', 'f'};
    static const char *const names[N_BUFFERS] = {"z",   "edge_index", "edge_dist",
                                                 "eta", "rs",         "out"};
    Py_buffer views[N_BUFFERS];
    int got = 0;
    PyObject *result = NULL;
    for (; got < N_BUFFERS; got++)
        if (get_buffer(objs[got], &views[got], kinds[got], got == N_BUFFERS - 1, names[got]))
            goto done;
    Py_ssize_t len[N_BUFFERS];
    for (int k = 0; k < N_BUFFERS; k++)
        len[k] = views[k].len / 8;
    wacsf_args a;
    a.n_atoms = len[0];
    a.n_edges = len[2];
    a.n_features = len[3];
    if (len[1] != 2 * a.n_edges || len[4] != a.n_features ||
        len[5] != a.n_atoms * a.n_features) {
        PyErr_SetString(PyExc_ValueError, "_wacsf_kernel.featurize: inconsistent array sizes");
        goto done;
    }
    if (!(rc > 0.0) || !isfinite(rc)) {
        PyErr_SetString(PyExc_ValueError, "_wacsf_kernel.featurize: rc must be finite and > 0");
        goto done;
    }
    a.z = (const int64_t *)views[0].buf;
    a.neighbour = (const int64_t *)views[1].buf;
    a.centre = a.neighbour + a.n_edges;
    a.dist = (const double *)views[2].buf;
    a.eta = (const double *)views[3].buf;
    a.rs = (const double *)views[4].buf;
    a.rc = rc;
    a.out = (double *)views[5].buf;
    if (isa < 0)
        isa = best_isa(g_isa_mask);
    if (isa >= ISA_COUNT || !(g_isa_mask & (1 << isa))) {
        PyErr_Format(PyExc_ValueError, "_wacsf_kernel.featurize: instruction set %d unsupported",
                     isa);
        goto done;
    }
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = wacsf_run(&a, isa);
    Py_END_ALLOW_THREADS
    if (status == WACSF_BAD_INDEX)
        PyErr_SetString(PyExc_ValueError, "_wacsf_kernel.featurize: atom index out of range");
    else
        result = PyLong_FromLong(status);
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
    PyModuleDef_HEAD_INIT, "_wacsf_kernel", "Compiled wACSF kernel (see wacsf_kernel.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__wacsf_kernel(void)
{
    g_isa_mask = supported_isas();
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddIntConstant(m, "ABI", WACSF_KERNEL_ABI) ||
        PyModule_AddStringConstant(m, "SOURCE_HASH", WACSF_SOURCE_HASH) ||
        PyModule_AddObject(m, "ALL_ISAS", Py_BuildValue("(ss)", isa_names[0], isa_names[1]))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
