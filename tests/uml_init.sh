#!/bin/sh
# init (PID 1) of a User-Mode Linux guest booted by tests/uml.py on the host's own
# filesystem (hostfs, read-only). It runs one job and powers off; it never returns.
#
# The kernel passes unknown `NAME=value` boot parameters to init as environment:
#   UML_JOB      host folder of the job (same path inside): run.sh in, output + exit_code out
#   UML_RW       colon-separated host folders mounted read-write at the same path
#   UML_MODULES  colon-separated kernel modules (.ko paths) to insmod first
#   UML_TIMEOUT  seconds the job may run before it is killed
#
# Mounted over the read-only root: proc, sys, devtmpfs (/dev), and tmpfs on /run (ip netns
# keeps its namespaces there), /tmp and /dev/shm (PostgreSQL's shared memory). The tmpfs
# on /tmp hides whatever the host keeps under /tmp; a UML_RW folder under /tmp is mounted
# on top of it. Everything written elsewhere is lost at power-off, by design.

# `ip netns exec` finds tc, the server, ... through PATH; init gets almost none.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# On an AVX-512 host, tests/uml_xstate_shim.c lets this UML run, but the AVX-512 part
# of the vector state is not switched between guest threads of one process: keep glibc,
# OpenSSL and numpy off AVX-512 (with glibc's AVX-512 string functions even kmod misreads
# a module). AVX and AVX2 state is switched by UML itself.
GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX512F,-AVX512VL,-AVX512BW,-AVX512DQ,-AVX512CD
OPENSSL_ia32cap="~0x0:~0xDC230000"
# numpy's own dispatch (names of numpy 2.x and of 1.x; names it does not know it ignores).
NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL"
export GLIBC_TUNABLES OPENSSL_ia32cap NPY_DISABLE_CPU_FEATURES

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
ip link set lo up

old_ifs=$IFS
IFS=:
for dir in $UML_RW; do
    mkdir -p "$dir"
    mount -t hostfs -o "$dir" hostfs "$dir" || echo "uml_init: cannot mount $dir" >&2
done
for module in $UML_MODULES; do
    insmod "$module" || echo "uml_init: insmod $module failed" >&2
done
IFS=$old_ifs

# The job's own output goes to a file on the host; the console keeps the kernel's.
timeout -k 5 "${UML_TIMEOUT:-600}" /bin/sh "$UML_JOB/run.sh" >"$UML_JOB/output" 2>&1
echo $? >"$UML_JOB/exit_code"

sync
IFS=:
for dir in $UML_RW; do
    umount "$dir" 2>/dev/null
done
# systemd's poweroff binary wants a system manager; the kernel's own switch needs none.
echo o >/proc/sysrq-trigger 2>/dev/null
poweroff --force --force
sleep 10
