/* Sampled allocation profiler: one sample per `rate` bytes allocated, as Go's MemProfileRate.
 *
 * A PyMem_SetAllocator wrapper on the MEM and OBJ domains (both called with the GIL held, so
 * the state below needs no lock; the RAW domain, called without it, is left alone) counts
 * bytes down from an exponentially distributed interval. The allocation that crosses zero is
 * sampled: its Python stack (code object and line, innermost first) and size are stored,
 * keyed by pointer, until it is freed. The common path is a decrement, and on free a lookup
 * in a table holding only sampled pointers. Memory of our own comes from libc's malloc, so
 * it never re-enters the hooks; code objects of samples are held until `stop()`, so no
 * object is released (and no Python code run) inside an allocator call.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#ifdef Py_GIL_DISABLED
#error "the sampled heap profiler relies on the GIL; free-threaded builds use tracemalloc"
#endif

typedef struct {
    PyCodeObject *code; /* a reference held in `codes` */
    int line;
} Frame;

typedef struct {
    size_t size;
    int nframes;
    Frame frames[]; /* innermost first */
} Sample;

/* Open addressing with linear probing and backward-shift deletion; keys are pointers. */
typedef struct {
    void **keys;
    void **values;
    size_t count;
    unsigned bits; /* capacity is 1 << bits, 0 when not allocated */
} Table;

static Table samples; /* sampled pointer -> Sample* */
static Table codes;   /* code object -> itself: one reference each */
static PyMemAllocatorEx original_mem, original_obj;
static int installed; /* our wrappers are in the allocator chain */
static int running;
static int busy; /* inside `take_sample`: allocations it makes are not sampled */
static int64_t countdown = INT64_MAX; /* bytes to allocate before the next sample */
static double rate;
static int max_frames;
static uint64_t rng_state;

static size_t slot_of(const Table *t, const void *key) {
    uint64_t h = ((uint64_t)(uintptr_t)key >> 4) * 0x9E3779B97F4A7C15ULL;
    return (size_t)(h >> (64 - t->bits));
}

static int table_grow(Table *t) {
    unsigned bits = t->bits ? t->bits + 1 : 10;
    size_t cap = (size_t)1 << bits;
    void **keys = calloc(cap, sizeof(void *));
    void **values = calloc(cap, sizeof(void *));
    if (keys == NULL || values == NULL) {
        free(keys);
        free(values);
        return 0;
    }
    Table bigger = {keys, values, 0, bits};
    size_t old_cap = t->bits ? (size_t)1 << t->bits : 0;
    for (size_t i = 0; i < old_cap; i++) {
        if (t->keys[i] != NULL) {
            size_t j = slot_of(&bigger, t->keys[i]);
            while (keys[j] != NULL) j = (j + 1) & (cap - 1);
            keys[j] = t->keys[i];
            values[j] = t->values[i];
            bigger.count++;
        }
    }
    free(t->keys);
    free(t->values);
    *t = bigger;
    return 1;
}

static int table_put(Table *t, void *key, void *value) {
    if (t->bits == 0 || 2 * (t->count + 1) > ((size_t)1 << t->bits)) {
        if (!table_grow(t)) return 0;
    }
    size_t mask = ((size_t)1 << t->bits) - 1, i = slot_of(t, key);
    while (t->keys[i] != NULL && t->keys[i] != key) i = (i + 1) & mask;
    if (t->keys[i] == NULL) t->count++;
    t->keys[i] = key;
    t->values[i] = value;
    return 1;
}

static int table_has(const Table *t, const void *key) {
    if (t->count == 0) return 0;
    size_t mask = ((size_t)1 << t->bits) - 1, i = slot_of(t, key);
    for (; t->keys[i] != NULL; i = (i + 1) & mask) {
        if (t->keys[i] == key) return 1;
    }
    return 0;
}

/* Removes `key`; its value, or NULL if absent. */
static void *table_pop(Table *t, const void *key) {
    if (t->count == 0) return NULL;
    size_t mask = ((size_t)1 << t->bits) - 1, i = slot_of(t, key);
    while (t->keys[i] != key) {
        if (t->keys[i] == NULL) return NULL;
        i = (i + 1) & mask;
    }
    void *value = t->values[i];
    /* Backward shift: move later entries of the run into the hole unless already home. */
    for (size_t j = (i + 1) & mask; t->keys[j] != NULL; j = (j + 1) & mask) {
        size_t home = slot_of(t, t->keys[j]);
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->keys[i] = t->keys[j];
            t->values[i] = t->values[j];
            i = j;
        }
    }
    t->keys[i] = NULL;
    t->values[i] = NULL;
    t->count--;
    return value;
}

static void table_free(Table *t) {
    free(t->keys);
    free(t->values);
    *t = (Table){NULL, NULL, 0, 0};
}

/* Exponentially distributed with mean `rate` (xorshift64*), so every byte is equally likely sampled. */
static int64_t next_interval(void) {
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    double u = ((rng_state * 0x2545F4914F6CDD1DULL) >> 11) * (1.0 / 9007199254740992.0);
    double interval = -log(1.0 - u) * rate; /* 1 - u is in (0, 1] */
    return interval < 1.0 ? 1 : (interval > 9e18 ? INT64_MAX : (int64_t)interval);
}

static void hold_code(PyCodeObject *code) {
    if (table_has(&codes, code) || !table_put(&codes, code, code)) {
        Py_DECREF(code); /* already held (or no room to hold it: the sample keeps a borrowed one) */
    }
}

/* The calling thread's Python stack, GC and the error indicator left as they were. */
static void capture_stack(Sample *s) {
#if PY_VERSION_HEX >= 0x030D0000
    PyThreadState *tstate = PyThreadState_GetUnchecked();
#else
    PyThreadState *tstate = _PyThreadState_UncheckedGet();
#endif
    if (tstate == NULL) return;
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *error = PyErr_GetRaisedException();
#else
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
#endif
    /* Frame objects are made on demand; a collection run here could see half-built objects. */
    int gc_was_enabled = PyGC_Disable();
    PyFrameObject *frame = PyThreadState_GetFrame(tstate);
    while (frame != NULL && s->nframes < max_frames) {
        PyCodeObject *code = PyFrame_GetCode(frame);
        s->frames[s->nframes].code = code;
        s->frames[s->nframes].line = PyFrame_GetLineNumber(frame);
        s->nframes++;
        hold_code(code);
        PyFrameObject *back = PyFrame_GetBack(frame);
        Py_DECREF(frame); /* its interpreter frame still holds it: nothing is freed */
        frame = back;
    }
    Py_XDECREF(frame);
    if (gc_was_enabled) PyGC_Enable();
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(error);
#else
    PyErr_Restore(type, value, traceback);
#endif
}

static void take_sample(void *ptr, size_t size) {
    countdown = next_interval();
    if (busy || !running) return;
    busy = 1;
    Sample *s = malloc(sizeof(Sample) + (size_t)max_frames * sizeof(Frame));
    if (s != NULL) {
        s->size = size;
        s->nframes = 0;
        capture_stack(s);
        free(table_pop(&samples, ptr)); /* a stale entry, if any */
        if (!table_put(&samples, ptr, s)) free(s);
    }
    busy = 0;
}

static inline void count(void *ptr, size_t size) {
    countdown -= (int64_t)size;
    if (countdown <= 0) take_sample(ptr, size);
}

static inline void forget(void *ptr) {
    if (samples.count != 0 && ptr != NULL) free(table_pop(&samples, ptr));
}

static void *hook_malloc(void *ctx, size_t size) {
    PyMemAllocatorEx *next = ctx;
    void *ptr = next->malloc(next->ctx, size);
    if (ptr != NULL) count(ptr, size);
    return ptr;
}

static void *hook_calloc(void *ctx, size_t nelem, size_t elsize) {
    PyMemAllocatorEx *next = ctx;
    void *ptr = next->calloc(next->ctx, nelem, elsize);
    if (ptr != NULL) count(ptr, nelem * elsize);
    return ptr;
}

/* A realloc counts as freeing the old block and allocating the new size (as jemalloc does). */
static void *hook_realloc(void *ctx, void *old, size_t size) {
    PyMemAllocatorEx *next = ctx;
    void *ptr = next->realloc(next->ctx, old, size);
    if (ptr != NULL) {
        forget(old);
        count(ptr, size);
    }
    return ptr;
}

static void hook_free(void *ctx, void *ptr) {
    PyMemAllocatorEx *next = ctx;
    forget(ptr);
    next->free(next->ctx, ptr);
}

static int is_ours(PyMemAllocatorDomain domain, PyMemAllocatorEx *original) {
    PyMemAllocatorEx now;
    PyMem_GetAllocator(domain, &now);
    return now.malloc == hook_malloc && now.ctx == original;
}

static void install(void) {
    PyMem_GetAllocator(PYMEM_DOMAIN_MEM, &original_mem);
    PyMem_GetAllocator(PYMEM_DOMAIN_OBJ, &original_obj);
    PyMemAllocatorEx mem = {&original_mem, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMemAllocatorEx obj = {&original_obj, hook_malloc, hook_calloc, hook_realloc, hook_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &obj);
    installed = 1;
}

/* Takes our wrappers out of the chain, unless another hook (tracemalloc) was installed over them. */
static void uninstall(void) {
    if (is_ours(PYMEM_DOMAIN_MEM, &original_mem) && is_ours(PYMEM_DOMAIN_OBJ, &original_obj)) {
        PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &original_mem);
        PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &original_obj);
        installed = 0;
    } /* else they stay, passing every call through: the countdown never reaches zero */
}

static void drop_samples(void) {
    size_t cap = samples.bits ? (size_t)1 << samples.bits : 0;
    for (size_t i = 0; i < cap; i++) free(samples.values[i]);
    table_free(&samples);
    Table held = codes;
    codes = (Table){NULL, NULL, 0, 0};
    cap = held.bits ? (size_t)1 << held.bits : 0;
    for (size_t i = 0; i < cap; i++) Py_XDECREF((PyObject *)held.keys[i]); /* may run Python code */
    table_free(&held);
}

static PyObject *start(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"rate", "frames", NULL};
    double new_rate;
    int frames;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "di", names, &new_rate, &frames)) return NULL;
    if (!(new_rate >= 1.0) || frames < 1 || frames > 1000) {
        PyErr_SetString(PyExc_ValueError, "rate must be >= 1 byte and frames between 1 and 1000");
        return NULL;
    }
    if (running) {
        PyErr_SetString(PyExc_RuntimeError, "the heap sampler is already running; stop() it first");
        return NULL;
    }
    rate = new_rate;
    max_frames = frames;
    rng_state ^= (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ULL ^ (uint64_t)getpid() ^ (uint64_t)(uintptr_t)&rng_state;
    if (rng_state == 0) rng_state = 0x2545F4914F6CDD1DULL;
    if (!installed) install();
    countdown = next_interval();
    running = 1;
    Py_RETURN_NONE;
}

static PyObject *stop(PyObject *module, PyObject *unused) {
    running = 0;
    countdown = INT64_MAX;
    if (installed) uninstall();
    drop_samples();
    Py_RETURN_NONE;
}

static PyObject *is_running(PyObject *module, PyObject *unused) { return PyBool_FromLong(running); }

static PyObject *is_installed(PyObject *module, PyObject *unused) { return PyBool_FromLong(installed); }

static PyObject *frame_tuple(const Frame *f) {
    PyCodeObject *code = f->code;
    return Py_BuildValue("(OiO)", code->co_filename, f->line, code->co_qualname);
}

static PyObject *sample_tuple(const Sample *s) {
    PyObject *stack = PyTuple_New(s->nframes);
    if (stack == NULL) return NULL;
    for (int i = 0; i < s->nframes; i++) {
        PyObject *frame = frame_tuple(&s->frames[i]);
        if (frame == NULL) {
            Py_DECREF(stack);
            return NULL;
        }
        PyTuple_SET_ITEM(stack, i, frame);
    }
    return Py_BuildValue("(nN)", (Py_ssize_t)s->size, stack);
}

/* Live samples as [(size, ((filename, line, function), ...innermost first))]. */
static PyObject *live_samples(PyObject *module, PyObject *unused) {
    /* Copied first: building the list allocates, and may sample or free into the table. */
    size_t n = samples.count, cap = samples.bits ? (size_t)1 << samples.bits : 0, k = 0;
    Sample **copies = calloc(n ? n : 1, sizeof(Sample *));
    if (copies == NULL) return PyErr_NoMemory();
    for (size_t i = 0; i < cap && k < n; i++) {
        const Sample *s = samples.values[i];
        if (s == NULL) continue;
        size_t bytes = sizeof(Sample) + (size_t)s->nframes * sizeof(Frame);
        if ((copies[k] = malloc(bytes)) == NULL) break;
        memcpy(copies[k++], s, bytes);
    }
    PyObject *out = k == n ? PyList_New((Py_ssize_t)n) : PyErr_NoMemory();
    for (size_t i = 0; i < k; i++) {
        PyObject *item = out != NULL ? sample_tuple(copies[i]) : NULL;
        if (item == NULL) Py_CLEAR(out);
        else PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        free(copies[i]);
    }
    free(copies);
    return out;
}

static PyMethodDef methods[] = {
    {"start", (PyCFunction)(void (*)(void))start, METH_VARARGS | METH_KEYWORDS,
     "start(rate, frames): sample one allocation per `rate` bytes on average, `frames` deep."},
    {"stop", stop, METH_NOARGS, "Stops sampling, forgets the samples and uninstalls the hooks if on top."},
    {"is_running", is_running, METH_NOARGS, "Whether allocations are being sampled."},
    {"is_installed", is_installed, METH_NOARGS, "Whether the allocator wrappers are in the chain."},
    {"samples", live_samples, METH_NOARGS,
     "Live sampled blocks: [(size, ((filename, line, function), ...innermost first))]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_heapsample",
    .m_doc = "Sampled allocation profiler (one sample per `rate` bytes) over PyMem_SetAllocator.",
    .m_size = -1,
    .m_methods = methods,
};

PyMODINIT_FUNC PyInit__heapsample(void) { return PyModule_Create(&module_def); }
