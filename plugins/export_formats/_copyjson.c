/* COPY's text rows as JSON objects, in one pass over a chunk.

   The optional native half of guest_formats.json_format.pg_json: the same bytes as
   its whole-chunk render in Python (tests/test_copyjson.py compares the two on
   random and hostile chunks), about a tenth of its CPU, and the GIL released while
   it runs.

   render(start, chunk, first_open, inner, boundary, tail, raw_bools) -> bytes | None

   chunk holds whole COPY text rows: len(inner) + 1 tab-separated values, each row
   ending in a line feed. The result is start + first_open, then every value with
   its quotes escaped (a backslash before each "), inner[i] after a row's value i,
   boundary between two rows and tail after the last. Where raw_bools[i] is 1 the
   value is COPY's t or f and becomes true or false.

   COPY's escapes \\ \b \f \n \r \t are JSON's and are copied. None (the caller then
   renders the chunk value by value) for anything else: a NULL (\N), \v or any
   other escape, a raw control character, a row with the wrong number of values, a
   boolean that is not t or f, a chunk that does not end in a line feed. Nothing is
   read outside the chunk: every look-ahead is checked against its end. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    char *data;
    size_t size, used;
} Out;

/* room for n more bytes; 0 when memory runs out */
static int reserve(Out *out, size_t n)
{
    if (out->size - out->used >= n)
        return 1;
    size_t size = out->size ? out->size : 4096;
    while (size - out->used < n) {
        if (size > ((size_t)PY_SSIZE_T_MAX) / 2)
            return 0;
        size *= 2;
    }
    char *grown = PyMem_RawRealloc(out->data, size);
    if (grown == NULL)
        return 0;
    out->data = grown;
    out->size = size;
    return 1;
}

static void put(Out *out, const char *bytes, size_t n)
{
    memcpy(out->data + out->used, bytes, n);
    out->used += n;
}

typedef struct {
    const char *data;
    size_t size;
} Text;

enum { DONE = 0, CAREFUL = 1, NO_MEMORY = 2 };

/* bytes a value may hold as they are: not a control character, quote or backslash */
static unsigned char PLAIN[256];

static int render_rows(const unsigned char *p, const unsigned char *end, Py_ssize_t columns,
                       const Text *inner, Text boundary, Text tail, const char *raw_bools,
                       size_t longest_text, Out *out)
{
    Py_ssize_t column = 0;
    if (p == end || end[-1] != '\n')
        return CAREFUL;
    while (p < end) {
        /* the rest of the chunk, every byte doubled, and the text after the value */
        if (!reserve(out, 2 * (size_t)(end - p) + longest_text + 8))
            return NO_MEMORY;
        if (raw_bools[column]) {
            if (end - p < 2 || p[1] != '\t' || (p[0] != 't' && p[0] != 'f'))
                return CAREFUL;
            if (p[0] == 't')
                put(out, "true", 4);
            else
                put(out, "false", 5);
            p++;
        }
        for (;;) {
            const unsigned char *run = p;
            while (p < end && PLAIN[*p])
                p++;
            put(out, (const char *)run, (size_t)(p - run));
            if (p == end)
                return CAREFUL; /* unreachable: the chunk ends in a line feed */
            unsigned char c = *p;
            if (c == '"') {
                put(out, "\\\"", 2);
                p++;
            } else if (c == '\\') {
                if (end - p < 2)
                    return CAREFUL;
                unsigned char e = p[1];
                if (e != '\\' && e != 'b' && e != 'f' && e != 'n' && e != 'r' && e != 't')
                    return CAREFUL; /* \N (NULL), \v, anything COPY would not write */
                put(out, (const char *)p, 2);
                p += 2;
            } else {
                break; /* a tab, a line feed or a raw control character */
            }
        }
        if (*p == '\t') {
            if (column == columns - 1)
                return CAREFUL; /* a value too many */
            put(out, inner[column].data, inner[column].size);
            column++;
        } else if (*p == '\n') {
            if (column != columns - 1)
                return CAREFUL; /* a value too few */
            if (p + 1 == end)
                put(out, tail.data, tail.size);
            else
                put(out, boundary.data, boundary.size);
            column = 0;
        } else {
            return CAREFUL; /* a raw control character: JSON wants \u00XX */
        }
        p++;
    }
    return DONE;
}

static int as_text(PyObject *object, Text *text, const char *what)
{
    if (!PyBytes_Check(object)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return 0;
    }
    text->data = PyBytes_AS_STRING(object);
    text->size = (size_t)PyBytes_GET_SIZE(object);
    return 1;
}

static PyObject *render(PyObject *module, PyObject *args)
{
    PyObject *start, *chunk, *first_open, *inner_tuple, *boundary_object, *tail_object, *bools;
    if (!PyArg_ParseTuple(args, "SSSO!SSS:render", &start, &chunk, &first_open, &PyTuple_Type,
                          &inner_tuple, &boundary_object, &tail_object, &bools))
        return NULL;
    Py_ssize_t columns = PyTuple_GET_SIZE(inner_tuple) + 1;
    if (columns < 2 || PyBytes_GET_SIZE(bools) != columns) {
        PyErr_SetString(PyExc_ValueError, "render needs two or more columns and a raw_bools "
                                          "byte for each");
        return NULL;
    }
    Text boundary, tail;
    if (!as_text(boundary_object, &boundary, "boundary") || !as_text(tail_object, &tail, "tail"))
        return NULL;
    Text *inner = PyMem_New(Text, (size_t)(columns - 1));
    if (inner == NULL)
        return PyErr_NoMemory();
    size_t longest = boundary.size > tail.size ? boundary.size : tail.size;
    for (Py_ssize_t i = 0; i < columns - 1; i++) {
        if (!as_text(PyTuple_GET_ITEM(inner_tuple, i), &inner[i], "inner's items")) {
            PyMem_Free(inner);
            return NULL;
        }
        if (inner[i].size > longest)
            longest = inner[i].size;
    }
    const char *raw_bools = PyBytes_AS_STRING(bools);
    if (raw_bools[0] || raw_bools[columns - 1]) {
        PyMem_Free(inner);
        PyErr_SetString(PyExc_ValueError, "the first and last values cannot be raw booleans");
        return NULL;
    }

    Out out = {NULL, 0, 0};
    int outcome = NO_MEMORY;
    size_t head = (size_t)PyBytes_GET_SIZE(start) + (size_t)PyBytes_GET_SIZE(first_open);
    if (reserve(&out, head)) {
        put(&out, PyBytes_AS_STRING(start), (size_t)PyBytes_GET_SIZE(start));
        put(&out, PyBytes_AS_STRING(first_open), (size_t)PyBytes_GET_SIZE(first_open));
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(chunk);
        const unsigned char *end = p + PyBytes_GET_SIZE(chunk);
        /* the arguments are immutable bytes this call holds: safe without the GIL */
        Py_BEGIN_ALLOW_THREADS
        outcome = render_rows(p, end, columns, inner, boundary, tail, raw_bools, longest, &out);
        Py_END_ALLOW_THREADS
    }
    PyMem_Free(inner);
    PyObject *result = NULL;
    if (outcome == DONE)
        result = PyBytes_FromStringAndSize(out.data, (Py_ssize_t)out.used);
    else if (outcome == CAREFUL)
        result = Py_NewRef(Py_None);
    else
        PyErr_NoMemory();
    PyMem_RawFree(out.data);
    return result;
}

static PyMethodDef methods[] = {
    {"render", render, METH_VARARGS,
     "render(start, chunk, first_open, inner, boundary, tail, raw_bools) -> bytes | None\n\n"
     "COPY's text rows as JSON objects; None where the chunk needs the careful path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copyjson",
    "COPY's text rows as JSON objects in one pass (json_format.pg_json's native half).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__copyjson(void)
{
    for (int c = 0; c < 256; c++)
        PLAIN[c] = c >= 0x20 && c != '"' && c != '\\';
    return PyModule_Create(&module);
}
