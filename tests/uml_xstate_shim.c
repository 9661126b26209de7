/*
 * LD_PRELOAD shim for Debian's linux.uml (6.1) on hosts with AVX-512.
 *
 * UML keeps a guest thread's FPU state in a buffer sized for the AVX era (832 bytes:
 * legacy area, XSAVE header, upper halves of the YMM registers) and writes it back with
 * PTRACE_SETREGSET NT_X86_XSTATE. The host kernel accepts that request only with its whole
 * XSAVE area (2.7 KiB with AVX-512) and answers EFAULT otherwise, so every guest dies at
 * its first system call ("userspace - ptrace set fp regs failed, errno = 14"). Kernels
 * from 6.13 on size the buffer from the host; Debian 12 ships 6.1.
 *
 * This wrapper completes such a write: it reads the traced process's whole area, lays
 * UML's part over its head and writes the whole. The AVX-512 part of the state is then
 * the host process's own, not switched per guest thread, so tests/uml_init.sh keeps the
 * guest's glibc, OpenSSL and numpy off AVX-512. Every other request passes through.
 *
 * Built by tests/uml.py with `cc -shared -fPIC`; written here because no package ships a
 * fix for this kernel (the alternative, making UML fall back to PTRACE_SETFPREGS, leaves
 * AVX-using guests crashing).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/types.h>
#include <sys/uio.h>

#define NT_X86_XSTATE_NOTE 0x202
#define WHOLE_AREA_MAX 16384 /* larger than any XSAVE area, AMX included */

typedef long (*ptrace_fn)(enum __ptrace_request, pid_t, void *, void *);

long ptrace(enum __ptrace_request request, ...)
{
    static ptrace_fn real;
    static unsigned char whole[WHOLE_AREA_MAX] __attribute__((aligned(64)));
    va_list ap;
    pid_t pid;
    void *addr, *data;

    va_start(ap, request);
    pid = va_arg(ap, pid_t);
    addr = va_arg(ap, void *);
    data = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = (ptrace_fn)dlsym(RTLD_NEXT, "ptrace");

    if (request == PTRACE_SETREGSET && (long)addr == NT_X86_XSTATE_NOTE && data) {
        struct iovec *part = data;
        struct iovec all = { whole, sizeof(whole) };

        if (real(PTRACE_GETREGSET, pid, addr, &all) == 0 && all.iov_len > part->iov_len) {
            memcpy(whole, part->iov_base, part->iov_len);
            return real(PTRACE_SETREGSET, pid, addr, &all);
        }
    }
    return real(request, pid, addr, data);
}
