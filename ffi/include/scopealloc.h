/*
 * scopealloc.h - the C interface of libscopealloc.so / libscopealloc.a.
 *
 * scopealloc is a memory allocator with hierarchical accounting scopes. Linked into a program
 * (-lscopealloc) or preloaded (LD_PRELOAD=libscopealloc.so), it provides malloc, free, calloc,
 * realloc, reallocarray, posix_memalign, aligned_alloc, memalign, valloc, pvalloc,
 * malloc_usable_size, malloc_trim, mallinfo2, mallinfo, malloc_stats, cfree and the __libc_*
 * aliases, with glibc's semantics (declared by <stdlib.h> and <malloc.h>, not here).
 *
 * Scopes: every allocation of a thread is charged to the thread's *current scope*. Scopes form
 * a tree under the root scope; a scope's figures include its descendants, and a scope may
 * carry a hard limit that its live bytes never pass (an allocation that would pass it fails:
 * NULL and errno = ENOMEM). Closing a scope moves its charges to the nearest open ancestor;
 * its objects stay valid.
 *
 * Handles: functions returning a scopealloc_scope_t * give the caller one reference, which it
 * gives back with scopealloc_scope_release(). Releasing the last handle of a scope closes it.
 * Handles may be used from any thread. A NULL handle is accepted by every function (see each
 * one); a pointer that is not a live handle is undefined behaviour.
 *
 *     scopealloc_scope_t *req = scopealloc_scope_new(NULL, "request-42");
 *     scopealloc_set_limit(req, 64 << 20);
 *     scopealloc_prev_t *prev = scopealloc_enter(req);
 *     char *buf = malloc(4096);              // charged to "request-42"
 *     scopealloc_leave(prev);
 *     struct scopealloc_stats st;
 *     scopealloc_stats(req, &st);            // st.bytes >= 4096
 *     free(buf);
 *     scopealloc_scope_release(req);         // last handle: the scope closes
 *
 * Environment (read once at start-up): SCOPEALLOC_LIMIT, SCOPEALLOC_STATS (0, 1 or text, json,
 * prometheus), SCOPEALLOC_STATS_FILE, SCOPEALLOC_STATS_SIGNAL (USR1, USR2, HUP: write the
 * report when the running process receives that signal), SCOPEALLOC_CHECK,
 * SCOPEALLOC_DECAY_MS; see README.md.
 */
#ifndef SCOPEALLOC_H
#define SCOPEALLOC_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A handle on a scope (opaque). */
typedef struct scopealloc_scope scopealloc_scope_t;

/* The scope a thread was in before scopealloc_enter(), as a token for scopealloc_leave(). */
typedef struct scopealloc_prev scopealloc_prev_t;

/* "No limit", for scopealloc_set_limit() and from scopealloc_limit(). */
#define SCOPEALLOC_NO_LIMIT ((size_t)-1)

/*
 * Figures of a scope. Sizes are usable sizes (what malloc_usable_size reports), in bytes.
 * Exact once the threads allocating in the scope are quiet. A closed scope reports 0 for
 * the live figures (bytes, self_bytes, objects, self_objects, charged_bytes): they moved
 * to its nearest open ancestor; the counters keep their values.
 */
struct scopealloc_stats {
    uint64_t bytes;         /* live bytes charged to the scope and its descendants */
    uint64_t self_bytes;    /* the same, without open descendants (closed ones moved here count) */
    uint64_t objects;       /* live objects, descendants included */
    uint64_t self_objects;  /* live objects of the scope itself */
    uint64_t peak_bytes;    /* high-water mark of charged_bytes since creation / reset_peak */
    uint64_t charged_bytes; /* bytes held against the limit: live bytes plus what per-thread
                               stocks hold in advance (at most 128 KiB per thread) */
    uint64_t allocs;        /* allocations charged since creation, descendants included */
    uint64_t frees;         /* frees of those (allocs - frees == objects at rest) */
    uint64_t limit_hits;    /* allocations refused because of this scope's limit */
};

/* Memory of the whole allocator, in bytes. */
struct scopealloc_heap_stats {
    size_t mapped;    /* address space mapped from the OS now */
    size_t committed; /* mapped minus what was given back with madvise: bounds the RSS */
    size_t in_use;    /* bytes in pages handed to slabs and large objects */
    size_t cached;    /* free pages kept committed for reuse (given back by decay or trim) */
    size_t returned;  /* bytes given back to the OS since start */
};

/* A new handle on the root scope, which always exists and never closes. */
scopealloc_scope_t *scopealloc_root(void);

/* A new handle on the calling thread's current scope (the root unless it entered another). */
scopealloc_scope_t *scopealloc_current(void);

/*
 * Creates a scope named `name` (NULL: ""; names are cut to 63 bytes, bytes that are not
 * UTF-8 become '?') as a child of `parent` (NULL: of the calling thread's current scope; a
 * closed parent: of its nearest open ancestor). Returns a new handle on it, or NULL with
 * errno = ENOMEM when the OS refuses memory for the scope's metadata.
 */
scopealloc_scope_t *scopealloc_scope_new(scopealloc_scope_t *parent, const char *name);

/* A new handle on the same scope as `scope` (NULL for NULL). Release each one. */
scopealloc_scope_t *scopealloc_scope_clone(scopealloc_scope_t *scope);

/*
 * Gives back a handle (NULL: no-op); it must not be used afterwards. Releasing the last
 * handle of a scope closes it, as scopealloc_close() does.
 */
void scopealloc_scope_release(scopealloc_scope_t *scope);

/*
 * Makes `scope` the calling thread's current scope (a closed scope: its nearest open
 * ancestor). Returns the previous scope as a token for scopealloc_leave(), to be used once,
 * on this thread, innermost first. Returns NULL (and changes nothing) if `scope` is NULL or
 * the thread's heap could not be created; scopealloc_leave(NULL) does nothing. The handle may
 * be released while the thread is inside: the thread stays in the scope (or in its nearest
 * open ancestor if the scope closes).
 */
scopealloc_prev_t *scopealloc_enter(scopealloc_scope_t *scope);

/* Makes the scope that was current before the matching scopealloc_enter() current again. */
void scopealloc_leave(scopealloc_prev_t *prev);

/*
 * Closes `scope` and its descendants, from any thread, at any time; idempotent; NULL: no-op.
 * Their charges move to the nearest open ancestor; their objects stay valid; threads inside
 * continue in that ancestor. The root never closes.
 */
void scopealloc_close(scopealloc_scope_t *scope);

/*
 * Sets the hard limit of `scope` in bytes, or removes it with SCOPEALLOC_NO_LIMIT. Takes
 * effect at once for new allocations (memory already charged stays). Returns 0, or EINVAL
 * if `scope` is NULL.
 */
int scopealloc_set_limit(scopealloc_scope_t *scope, size_t limit);

/* The hard limit of `scope`; SCOPEALLOC_NO_LIMIT if it has none or `scope` is NULL. */
size_t scopealloc_limit(scopealloc_scope_t *scope);

/* Fills *out with the figures of `scope`. Returns 0, or EINVAL if either is NULL. */
int scopealloc_stats(scopealloc_scope_t *scope, struct scopealloc_stats *out);

/* Restarts the high-water mark (peak_bytes) of `scope` at its current charge. NULL: no-op. */
void scopealloc_reset_peak(scopealloc_scope_t *scope);

/*
 * Copies the name of `scope` into buf (at most len bytes, NUL included, cut if needed) and
 * returns the length of the whole name, like snprintf. Returns 0 for NULL; buf may be NULL.
 */
size_t scopealloc_scope_name(scopealloc_scope_t *scope, char *buf, size_t len);

/* The id of `scope`: unique in the process, never reused; the root's is 1. 0 for NULL. */
uint64_t scopealloc_scope_id(scopealloc_scope_t *scope);

/* A new handle on the parent of `scope`; NULL for the root or for NULL. */
scopealloc_scope_t *scopealloc_scope_parent(scopealloc_scope_t *scope);

/* 1 if `scope` is closed, 0 if open, -1 for NULL. */
int scopealloc_is_closed(scopealloc_scope_t *scope);

/* Fills *out with the allocator's memory figures. Returns 0, or EINVAL if `out` is NULL. */
int scopealloc_heap_stats(struct scopealloc_heap_stats *out);

/*
 * Writes the report that SCOPEALLOC_STATS=1 prints at exit to the file descriptor `fd`:
 * lines starting with "scopealloc: ", the allocator's figures, then one line per open scope,
 * depth first, indented two spaces per level:
 *   scopealloc: scope NAME id=N bytes=N self_bytes=N objects=N self_objects=N peak=N
 *               charged=N allocs=N frees=N limit=N|none limit_hits=N      (one line)
 * It does not call malloc for its output; it is safe to call at any time after start-up.
 */
void scopealloc_print_stats(int fd);

/* Formats of scopealloc_report() (and of SCOPEALLOC_STATS=text|json|prometheus). */
#define SCOPEALLOC_REPORT_TEXT 0       /* the lines of scopealloc_print_stats() */
#define SCOPEALLOC_REPORT_JSON 1       /* one line of JSON: {"heap":{...},"scopes":[...]},
                                          scopes in pre-order, each with "path", "name", "id",
                                          "parent", "depth", "current" (bytes), "objects",
                                          "self_bytes", "self_objects", "peak", "max" (the
                                          limit or null), "charged", "allocs", "frees",
                                          "events" {"max": N} and "classes"; see docs/REPORT.md */
#define SCOPEALLOC_REPORT_PROMETHEUS 2 /* Prometheus text exposition (format 0.0.4):
                                          scopealloc_scope_bytes{scope="a/b"} N, _objects,
                                          _peak_bytes, ... with HELP and TYPE lines; deep or
                                          numerous scopes folded into "(others)" series */

/*
 * Writes a report of the whole scope tree, taken now, in `format` (SCOPEALLOC_REPORT_*) into
 * buf, like snprintf: at most `len` bytes, NUL-terminated when len > 0 (cut if needed), and
 * returns the length of the whole report, not counting the NUL, whether or not it fitted;
 * buf may be NULL when len is 0 (to ask for the length). Each call takes a new report, so a
 * second call may need a little more room than the first returned: leave a margin, and call
 * again if the result is >= len. Returns -1 and sets errno to EINVAL (unknown format, or buf
 * NULL with len > 0) or ENOMEM (no memory for the report).
 *
 * JSON and Prometheus build the report with malloc (charged to the calling thread's current
 * scope, after the figures were read: they do not include it); do not call it from a signal
 * handler.
 */
ssize_t scopealloc_report(char *buf, size_t len, int format);

#ifdef __cplusplus
}
#endif

#endif /* SCOPEALLOC_H */
