/* COPY's rows as the export formats write them, in one pass over a chunk: the
   optional native half of the PostgreSQL fast paths in guest_formats.json_format
   and guest_formats.csv_format. Each function writes the same bytes as the
   Python it stands in for (tests/test_copyrender.py compares them on random and
   hostile chunks, also under AddressSanitizer), at a fraction of its CPU, with
   the GIL released while it runs. Each returns None where a chunk holds what it
   does not render whole; the caller then takes its careful path. Nothing is read
   outside the chunk: every look-ahead is checked against its end.

   json_rows(start, chunk, first_open, inner, boundary, tail, raw_bools) -> bytes | None

   chunk holds whole COPY text rows: len(inner) + 1 tab-separated values, each row
   ending in a line feed. The result is start + first_open, then every value with
   its quotes escaped (a backslash before each "), inner[i] after a row's value i,
   boundary between two rows and tail after the last. Where raw_bools[i] is 1 the
   value is COPY's t or f and becomes true or false. COPY's escapes \\ \b \f \n \r
   \t are JSON's and are copied. None for anything else: a NULL (\N), \v or any
   other escape, a raw control character, a row with the wrong number of values,
   a boolean that is not t or f, a chunk that does not end in a line feed.

   csv_rows(chunk, bools) -> bytes | None

   chunk holds whole rows of COPY's CSV (len(bools) values, a quoted value may
   hold line breaks). The result: every row's line feed as CRLF, and the values
   at the columns where bools[i] is 1, forced-quoted "t" or "f", as true or
   false. None where the chunk holds a backslash followed by N (a NULL, or a
   value holding \N: the caller parses those rows), a row with the wrong number
   of values, such a boolean that is not "t" or "f", an unclosed quote, a quote
   or CR in an unquoted value, or a chunk that does not end in a line feed. */

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

static int csv_pass(const unsigned char *p, const unsigned char *end, Py_ssize_t columns,
                    const char *bools, Out *out)
{
    Py_ssize_t column = 0;
    if (p == end || end[-1] != '\n')
        return CAREFUL;
    for (const unsigned char *b = p; (b = memchr(b, '\\', (size_t)(end - b))) != NULL; b++)
        if (b + 1 < end && b[1] == 'N')
            return CAREFUL; /* \N: a NULL, or a value COPY quoted because it is \N */
    /* every byte once, a CR per row, a boolean two more than its three */
    if (!reserve(out, 2 * (size_t)(end - p) + 8))
        return NO_MEMORY;
    while (p < end) {
        if (bools[column]) {
            if (end - p < 4 || p[0] != '"' || p[2] != '"' || p[3] != ','
                || (p[1] != 't' && p[1] != 'f'))
                return CAREFUL;
            if (p[1] == 't')
                put(out, "true", 4);
            else
                put(out, "false", 5);
            p += 3;
        } else if (*p == '"') {
            /* a quoted value: to the quote that is not doubled */
            const unsigned char *run = p++;
            for (;;) {
                const unsigned char *quote = memchr(p, '"', (size_t)(end - p));
                if (quote == NULL)
                    return CAREFUL; /* unclosed */
                p = quote + 1;
                if (p < end && *p == '"') {
                    p++; /* a doubled quote */
                    continue;
                }
                break;
            }
            put(out, (const char *)run, (size_t)(p - run));
        } else {
            const unsigned char *run = p;
            while (p < end && *p != ',' && *p != '\n' && *p != '"' && *p != '\r')
                p++;
            put(out, (const char *)run, (size_t)(p - run));
        }
        if (p == end)
            return CAREFUL;
        if (*p == ',') {
            if (column == columns - 1)
                return CAREFUL; /* a value too many */
            put(out, ",", 1);
            column++;
        } else if (*p == '\n') {
            if (column != columns - 1)
                return CAREFUL; /* a value too few */
            put(out, "\r\n", 2);
            column = 0;
        } else {
            return CAREFUL; /* a quote or a CR in an unquoted value: COPY quotes those */
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

/* the pass's outcome as the function's result: the bytes, None or MemoryError;
   the buffer freed either way */
static PyObject *finish(int outcome, Out *out)
{
    PyObject *result = NULL;
    if (outcome == DONE)
        result = PyBytes_FromStringAndSize(out->data, (Py_ssize_t)out->used);
    else if (outcome == CAREFUL)
        result = Py_NewRef(Py_None);
    else
        PyErr_NoMemory();
    PyMem_RawFree(out->data);
    return result;
}

static PyObject *json_rows(PyObject *module, PyObject *args)
{
    PyObject *start, *chunk, *first_open, *inner_tuple, *boundary_object, *tail_object, *bools;
    if (!PyArg_ParseTuple(args, "SSSO!SSS:json_rows", &start, &chunk, &first_open, &PyTuple_Type,
                          &inner_tuple, &boundary_object, &tail_object, &bools))
        return NULL;
    Py_ssize_t columns = PyTuple_GET_SIZE(inner_tuple) + 1;
    if (columns < 2 || PyBytes_GET_SIZE(bools) != columns) {
        PyErr_SetString(PyExc_ValueError, "json_rows needs two or more columns and a raw_bools "
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
    return finish(outcome, &out);
}

static PyObject *csv_rows(PyObject *module, PyObject *args)
{
    PyObject *chunk, *bools;
    if (!PyArg_ParseTuple(args, "SS:csv_rows", &chunk, &bools))
        return NULL;
    Py_ssize_t columns = PyBytes_GET_SIZE(bools);
    const char *forced = PyBytes_AS_STRING(bools);
    if (columns < 2 || forced[columns - 1]) {
        PyErr_SetString(PyExc_ValueError, "csv_rows needs two or more columns, the last "
                                          "not a boolean");
        return NULL;
    }
    Out out = {NULL, 0, 0};
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(chunk);
    const unsigned char *end = p + PyBytes_GET_SIZE(chunk);
    int outcome;
    Py_BEGIN_ALLOW_THREADS
    outcome = csv_pass(p, end, columns, forced, &out);
    Py_END_ALLOW_THREADS
    return finish(outcome, &out);
}

static PyMethodDef methods[] = {
    {"json_rows", json_rows, METH_VARARGS,
     "json_rows(start, chunk, first_open, inner, boundary, tail, raw_bools) -> bytes | None\n\n"
     "COPY's text rows as JSON objects; None where the chunk needs the careful path."},
    {"csv_rows", csv_rows, METH_VARARGS,
     "csv_rows(chunk, bools) -> bytes | None\n\n"
     "COPY's CSV rows with CRLF and forced-quoted booleans as true/false; None where the "
     "chunk needs the careful path."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_copyrender",
    "COPY's rows as the export formats write them, in one pass (the fast paths' native half).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__copyrender(void)
{
    for (int c = 0; c < 256; c++)
        PLAIN[c] = c >= 0x20 && c != '"' && c != '\\';
    return PyModule_Create(&module);
}
