#!/bin/sh
# PID 1 of a User-Mode Linux guest started by tests/uml/run_guest.sh.
#
# The guest's root file system is the host's / (hostfs), so every write outside a
# tmpfs lands on the host: this script keeps its own state on tmpfs (/run, /dev/shm)
# and writes results only into OUTDIR (the directory holding $XW_GUEST_SCRIPT).
#
# Environment (from KEY=VALUE words on the kernel command line):
#   XW_GUEST_SCRIPT  absolute path of the script to run (written by run_guest.sh)
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root
# The guest's FPU state is saved and restored as the legacy fxsave area only (see the
# XSTATE note in run_guest.sh). Measured on a Sapphire Rapids host (AVX-512, AMX,
# TSX): guest code using AVX-512 registers or TSX (RTM) goes wrong: glibc's EVEX
# printf printing "%s" literally, insmod failing with EINVAL, Python dying in getpath
# or with SIGSEGV. AVX/AVX2 code gives the same results as on the host. So keep
# glibc's string functions off AVX-512 and RTM (GLIBC_TUNABLES) and OpenSSL
# (Python's hashlib, strongSwan's openssl plugin) off AVX-512/VAES (OPENSSL_ia32cap
# clears those CPUID.7 bits). The tunables also reach the module loader below.
# On an AMD EPYC host (AVX-512, no AMX; Nov 2026) AVX/AVX2 code is not safe either:
# Python died at start-up ("segfault at 18 ... in libpython3.11") until glibc and
# OpenSSL were kept off AVX, AVX2 and FMA too (the same masks tests/guest/swan.py
# gives charon): the guest's YMM upper halves are not saved across task switches.
export GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-AVX2,-FMA,-AVX_Fast_Unaligned_Load,-RTM,-AVX512F,-AVX512CD,-AVX512BW,-AVX512DQ,-AVX512VL,-AVX512_VBMI,-AVX512_VBMI2,-AVX512_VNNI,-AVX512_BITALG,-AVX512_VPOPCNTDQ,-AVX512_IFMA,-AVX512_BF16,-AVX512_FP16
export OPENSSL_ia32cap='~0x1000100000000000:~0x5E42D0230020'

log() { echo "guest-init: $*"; }

halt_guest() {
    sync
    poweroff -f >/dev/null 2>&1
    echo o > /proc/sysrq-trigger 2>/dev/null
    sleep 5
    exit 1    # PID 1 exiting makes the kernel panic, which also stops UML
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o mode=0755 tmpfs /run
# /dev is the guest's own devtmpfs (mounted by the kernel), not the host's.
mkdir -p /dev/shm /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm 2>/dev/null
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /dev/pts 2>/dev/null
ln -sf /proc/self/fd /dev/fd
ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout
ln -sf /proc/self/fd/2 /dev/stderr
mkdir -p /run/tmp && chmod 1777 /run/tmp

if [ -z "$XW_GUEST_SCRIPT" ] || [ ! -f "$XW_GUEST_SCRIPT" ]; then
    log "XW_GUEST_SCRIPT not set or missing: '$XW_GUEST_SCRIPT'"
    halt_guest
fi
outdir=$(dirname "$XW_GUEST_SCRIPT")

# Kernel modules from the UML package, without touching the host's /lib/modules.
kver=$(uname -r)
mkdir -p /run/mroot/lib/modules
ln -s "/usr/lib/uml/modules/$kver" "/run/mroot/lib/modules/$kver"
# The kernel's own module requests (crypto-hmac(sha256), xfrm-type-2-50, ...) go
# through this wrapper so they find the same directory.
# (The kernel starts it with an empty environment: pass the tunables on.)
printf '#!/bin/sh\nexport GLIBC_TUNABLES=%s\nexec /sbin/modprobe -d /run/mroot "$@"\n' \
    "$GLIBC_TUNABLES" > /run/modprobe
chmod +x /run/modprobe
echo /run/modprobe > /proc/sys/kernel/modprobe
for m in xfrm_user esp4 esp6 ah4 ah6 ipcomp ipcomp6 xfrm4_tunnel xfrm6_tunnel \
         veth dummy; do
    modprobe -d /run/mroot "$m" 2>/dev/null || log "module $m not loaded (missing?)"
done

ip link set lo up
echo xw-uml > /proc/sys/kernel/hostname

export XW_IN_UML=1
export TMPDIR=/run/tmp
log "running $XW_GUEST_SCRIPT"
"$XW_GUEST_SCRIPT" > "$outdir/guest.log" 2>&1 < /dev/null
rc=$?
echo "$rc" > "$outdir/rc.tmp" && mv "$outdir/rc.tmp" "$outdir/rc"
log "command exited with $rc"
halt_guest
