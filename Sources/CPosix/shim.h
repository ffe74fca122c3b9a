#pragma once
// libc headers Swift's Glibc module does not bring in.
#include <sys/xattr.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <malloc.h>
static inline unsigned int cposix_major(unsigned long long dev) { return major(dev); }
static inline unsigned int cposix_minor(unsigned long long dev) { return minor(dev); }
static inline unsigned long long cposix_makedev(unsigned int ma, unsigned int mi) { return makedev(ma, mi); }
#include <unistd.h>
#include <sys/types.h>
// copy_file_range(2) is declared only under _GNU_SOURCE; declare it for Swift (glibc >= 2.27 has it).
extern ssize_t copy_file_range(int fd_in, off_t *off_in, int fd_out, off_t *off_out, size_t len, unsigned int flags);
// sync_file_range(2) likewise (_GNU_SOURCE); SYNC_FILE_RANGE_WRITE starts writeback without waiting for it.
extern int sync_file_range(int fd, off_t offset, off_t nbytes, unsigned int flags);
#define CPOSIX_SYNC_FILE_RANGE_WRITE 2
// O_DIRECT is _GNU_SOURCE too; glibc's bits define its per-architecture value as __O_DIRECT.
#define CPOSIX_O_DIRECT __O_DIRECT
// O_TMPFILE (an unnamed file in a directory, given a name later with linkat) and AT_EMPTY_PATH are _GNU_SOURCE too.
static inline int cposix_o_tmpfile(void) { return __O_TMPFILE; }
#define CPOSIX_AT_EMPTY_PATH 0x1000
#include <stdint.h>
#include <errno.h>
#include <sys/syscall.h>
// cachestat(2) (Linux 6.5, syscall 451 on every architecture): how many pages of a file range are in
// the page cache, without touching them. Returns -1 (errno ENOSYS on older kernels) on failure.
static inline long long cposix_cached_pages(int fd, uint64_t off, uint64_t len) {
  struct { uint64_t off, len; } range = { off, len };
  struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } cs;
  if (syscall(451, fd, &range, &cs, 0) != 0) return -1;
  return (long long)cs.nr_cache;
}
// pipe2(2) and memfd_create(2) are declared only under _GNU_SOURCE too (glibc >= 2.27 has both).
extern int pipe2(int pipefd[2], int flags);
extern int memfd_create(const char *name, unsigned int flags);
#define CPOSIX_MFD_CLOEXEC 1U
// O_PATH is _GNU_SOURCE too.
#define CPOSIX_O_PATH 010000000
// fanotify(7) with file handles: the change journal. fanotify_init/fanotify_mark come from <sys/fanotify.h>;
// open_by_handle_at(2) is _GNU_SOURCE, so it is called through syscall(2) with the kernel's struct layout.
#include <sys/fanotify.h>
#include <sys/statfs.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
static inline int cposix_fanotify_init(unsigned int flags, unsigned int event_f_flags) {
  return fanotify_init(flags, event_f_flags);
}
static inline int cposix_fanotify_mark(int fd, unsigned int flags, uint64_t mask, int dirfd, const char *path) {
  return fanotify_mark(fd, flags, mask, dirfd, path);
}
// Opens the object a file handle names (type and bytes as fanotify reports them), relative to the file system
// that `mount_fd` is on. -1 with errno (ESTALE: the object is gone) on failure.
static inline int cposix_open_by_handle(int mount_fd, int handle_type, const unsigned char *bytes,
                                        unsigned int count, int flags) {
  struct { unsigned int handle_bytes; int handle_type; unsigned char f_handle[128]; } h;
  if (count > sizeof h.f_handle) { errno = EINVAL; return -1; }
  h.handle_bytes = count;
  h.handle_type = handle_type;
  memcpy(h.f_handle, bytes, count);
  return (int)syscall(SYS_open_by_handle_at, mount_fd, &h, flags);
}
// The file system id statfs(2) reports (fanotify's events carry the same value).
static inline int cposix_fsid(int fd, uint64_t *out) {
  struct statfs s;
  if (fstatfs(fd, &s) != 0) return -1;
  uint32_t a = (uint32_t)s.f_fsid.__val[0], b = (uint32_t)s.f_fsid.__val[1];
  *out = ((uint64_t)b << 32) | a;
  return 0;
}
// listxattrat(2) and getxattrat(2) (Linux 6.13; syscalls 465 and 464 on x86-64 and arm64): extended
// attributes of a directory entry named relative to the directory's descriptor, without following a
// symlink, so a walk that holds the directory open does not look up the whole path again. -1 with errno
// ENOSYS where the kernel (or a seccomp filter) lacks them.
static inline long cposix_listxattrat(int dfd, const char *path, char *list, size_t size) {
#if defined(__x86_64__) || defined(__aarch64__)
  return syscall(465, dfd, path, AT_SYMLINK_NOFOLLOW, list, size);
#else
  errno = ENOSYS;
  return -1;
#endif
}
static inline long cposix_getxattrat(int dfd, const char *path, const char *name, void *value, size_t size) {
#if defined(__x86_64__) || defined(__aarch64__)
  struct { uint64_t value; uint32_t size; uint32_t flags; } args = { (uint64_t)(uintptr_t)value, (uint32_t)size, 0 };
  return syscall(464, dfd, path, AT_SYMLINK_NOFOLLOW, name, &args, sizeof args);
#else
  errno = ENOSYS;
  return -1;
#endif
}
