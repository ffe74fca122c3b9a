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
