/*
 * core.h - the public header of core/: the one error enum of moemesh,
 * per-thread error detail, aligned memory, checked size arithmetic, numbers
 * from text and clocks.  Every other folder depends on this one; it depends
 * on nothing of moemesh.
 *
 * Conventions (see DESIGN.md): action functions return moe_err, MOE_OK = 0;
 * outputs come first in argument lists; on failure a function sets a
 * human-readable detail (what failed, which field, which offset) that the
 * caller reads with moe_err_detail() on the same thread, like errno.
 */
#ifndef MOE_CORE_H
#define MOE_CORE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

typedef enum moe_err {
	MOE_OK = 0,
	MOE_ERR_NOMEM,       /* allocation failed */
	MOE_ERR_INVAL,       /* bad argument from the caller */
	MOE_ERR_IO,          /* read/write/open failed (errno in the detail) */
	MOE_ERR_UNSUPPORTED, /* valid input we do not handle (type, arch, version) */
	MOE_ERR_NOT_FOUND,   /* a named key, tensor, file or route is absent */
	/* malformed input: files, wire frames, client requests */
	MOE_ERR_BAD_MAGIC,     /* wrong magic number */
	MOE_ERR_BAD_VERSION,   /* unknown format or protocol version */
	MOE_ERR_TRUNCATED,     /* input ends before a field it announces */
	MOE_ERR_BAD_COUNT,     /* a count or length is absurd for the input size */
	MOE_ERR_BAD_STRING,    /* a string is too long or not valid */
	MOE_ERR_BAD_TYPE,      /* unknown value or tensor type */
	MOE_ERR_BAD_SHAPE,     /* dimensions: too many, zero, or inconsistent */
	MOE_ERR_OVERFLOW,      /* a size computation overflows */
	MOE_ERR_BAD_OFFSET,    /* an offset or range lies outside the input */
	MOE_ERR_BAD_ALIGNMENT, /* an offset or alignment value is not aligned */
	MOE_ERR_DUPLICATE,     /* the same key or name appears twice */
	MOE_ERR_BAD_VALUE,     /* a value is out of its allowed range */
	MOE_ERR_FORMAT,        /* other malformed input (JSON, text, ...) */
	/* distributed operation */
	MOE_ERR_PROTO,    /* a peer broke the wire protocol */
	MOE_ERR_TIMEOUT,  /* a deadline passed */
	MOE_ERR_CLOSED,   /* the peer or object was closed */
	MOE_ERR_MISMATCH, /* peers disagree (model identity, version, ISA) */
	MOE_ERR_BUSY,     /* overloaded; try again later */
	MOE_ERR_AUTH,     /* authentication failed */
	MOE_ERR_CANCELED, /* the operation was canceled */
	MOE_ERR_STATE,    /* called in the wrong state */
	MOE_ERR_SYS,      /* another system call failed (errno in the detail) */
	MOE_ERR__COUNT
} moe_err;

/* Returns a static, stable name for err ("MOE_ERR_TRUNCATED"); never NULL. */
const char *moe_err_name(moe_err err);

/* Records a formatted detail for err on the calling thread and returns err, so
 * that failures read `return moe_fail(MOE_ERR_TRUNCATED, "tensor %s: ...", n);`.
 * The detail is truncated to 511 bytes. */
moe_err moe_fail(moe_err err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
moe_err moe_failv(moe_err err, const char *fmt, va_list ap);

/* Returns the detail of the last moe_fail on this thread ("" if none). The
 * string is owned by the thread and valid until its next moe_fail. */
const char *moe_err_detail(void);

/* Clears this thread's detail. */
void moe_err_clear(void);

/* Allocates size bytes aligned to align (a power of two >= sizeof(void*));
 * size 0 gives a unique pointer. Returns NULL on failure. Free with
 * moe_aligned_free (NULL is a no-op). */
void *moe_aligned_alloc(size_t align, size_t size);
void moe_aligned_free(void *p);

/* Multiplication and addition of sizes that report overflow: return 0 and
 * leave *out unchanged on overflow, 1 on success. */
int moe_size_mul(size_t *out, size_t a, size_t b);
int moe_size_add(size_t *out, size_t a, size_t b);

/* Numbers from text (parse.c): the whole of s must be the number, base 10,
 * within [lo, hi].  Each returns 0 on success and -1 (leaving *out untouched)
 * otherwise. */
int moe_parse_long(long *out, const char *s, long lo, long hi);
int moe_parse_int(int *out, const char *s, long lo, long hi);
int moe_parse_float(float *out, const char *s);

/* The whole file at path into *out (malloc'd, NUL-terminated after its *len
 * bytes).  Errors: MOE_ERR_IO (cannot open or read: the detail names path and
 * why), MOE_ERR_BAD_COUNT (more than max bytes), MOE_ERR_NOMEM. */
moe_err moe_read_file(char **out, size_t *len, const char *path, size_t max);

/* Monotonic clock. */
uint64_t moe_now_ns(void);
double moe_now_s(void);

#endif
