/*
 * core.h - the public header of core/: the one error enum of moemesh,
 * per-thread error detail, aligned memory, checked size arithmetic, numbers
 * from text, clocks and log lines.  Every other folder depends on this one; it depends
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
#include <stdbool.h>
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

/* ---- log lines (log.c) -------------------------------------------------------------- */

typedef enum moe_log_level {
	MOE_LOG_ERROR = 0,
	MOE_LOG_WARN = 1,
	MOE_LOG_INFO = 2, /* the default */
	MOE_LOG_DEBUG = 3,
} moe_log_level;

/* "error", "warn", "info" or "debug" (exactly) into *out; MOE_ERR_INVAL
 * naming s and the four otherwise. */
moe_err moe_log_level_parse(moe_log_level *out, const char *s);
const char *moe_log_level_name(moe_log_level l);

/* The process-wide level (set once, from --log-level, before threads log;
 * reads and writes are atomic).  Lines above it are dropped. */
void moe_log_set_level(moe_log_level l);
moe_log_level moe_log_get_level(void);
bool moe_log_enabled(moe_log_level l);

/* One line on stderr, written whole (threads do not interleave): the UTC time
 * (2026-01-02T03:04:05.678Z), the level and the message; when stderr is the
 * journal's stream (JOURNAL_STREAM) a syslog priority prefix (<3> .. <7>)
 * instead, since journald stamps the time itself.  Lines over 2 KiB are cut. */
void moe_log(moe_log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void moe_logv(moe_log_level l, const char *fmt, va_list ap);

#endif
