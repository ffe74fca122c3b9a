#pragma once
// libc headers Swift's Glibc module does not bring in.
#include <sys/xattr.h>
#include <sys/sysmacros.h>
#include <fcntl.h>
#include <malloc.h>
static inline unsigned int cposix_major(unsigned long long dev) { return major(dev); }
static inline unsigned int cposix_minor(unsigned long long dev) { return minor(dev); }
static inline unsigned long long cposix_makedev(unsigned int ma, unsigned int mi) { return makedev(ma, mi); }
