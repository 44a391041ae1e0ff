"""A small seccomp-BPF filter for the program's processes (stdlib only; used by `_worker.py`).

Why a hand-written filter and not libseccomp: the filter is a deny list of ~50 system calls plus one
argument check, a few dozen BPF instructions that this module assembles and the hostile battery
tests; libseccomp's Python bindings are not on PyPI as a maintained wheel (``pyseccomp`` is a 2021
ctypes shim that still needs the system ``libseccomp.so``), so a dependency would buy nothing but a
way to fail at install time.

What it blocks (``EPERM``, so a program sees ``PermissionError``): new namespaces of any kind
(``unshare``, ``setns``, ``clone`` with a ``CLONE_NEW*`` flag: no user namespace, hence no
capability set a program could get), ``clone3`` (``ENOSYS``: its flags sit in memory a filter cannot
read; glibc then falls back to ``clone``), mounts and the new mount API, ``chroot``/``pivot_root``,
``ptrace``, ``process_vm_readv/writev``, ``pidfd_getfd``, ``kcmp``, ``bpf``, ``perf_event_open``,
``userfaultfd``, ``io_uring_*``, the kernel keyring, file handles (``open_by_handle_at``), kernel
modules, ``kexec``, ``reboot``, swap, ``acct``, quotas, ``syslog``, clock setting, ``vhangup``,
``iopl``/``ioperm``, ``uselib``, host and domain names. A foreign ABI (i386 ``int 0x80`` or x32 on
x86_64) gets ``ENOSYS`` for every call, so the deny list cannot be side-stepped through other
system call numbers. Architectures: x86_64 and aarch64; elsewhere `filter_program` returns None and
the worker reports ``seccomp: false`` with a warning.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# linux/audit.h
AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
X32_SYSCALL_BIT = 0x40000000

# Every namespace flag clone(2) accepts: CLONE_NEWTIME, NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER,
# NEWPID, NEWNET.
CLONE_NAMESPACES = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000
CLONE_NAMESPACES |= 0x20000000 | 0x40000000

# Denied system calls: name -> (x86_64 number, aarch64 / asm-generic number or None).
DENIED: dict[str, tuple[int, int | None]] = {
    "unshare": (272, 97),
    "setns": (308, 268),
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "mount_setattr": (442, 442),
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "pidfd_getfd": (438, 438),
    "kcmp": (312, 272),
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    "open_by_handle_at": (304, 265),
    "name_to_handle_at": (303, 264),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "reboot": (169, 142),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "syslog": (103, 116),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "adjtimex": (159, 171),
    "lookup_dcookie": (212, 18),
    "fanotify_init": (300, 262),
    "vhangup": (153, 58),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "iopl": (172, None),
    "ioperm": (173, None),
    "uselib": (134, None),
}
CLONE = {"x86_64": 56, "aarch64": 220}
CLONE3 = 435

# linux/filter.h, linux/seccomp.h
BPF_LD_W_ABS = 0x20
BPF_JEQ_K = 0x15
BPF_JGE_K = 0x35
BPF_JSET_K = 0x45
BPF_RET_K = 0x06
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
OFFSET_NR, OFFSET_ARCH, OFFSET_ARG0 = 0, 4, 16  # struct seccomp_data (args[0]'s low word: little-endian)
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def _machine() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)


def filter_program(machine: str | None = None) -> list[tuple[int, int, int, int]] | None:
    """The filter as (code, jt, jf, k) instructions for ``machine`` (default: this one), or None
    where this module has no system call table."""
    machine = machine or _machine()
    if machine not in AUDIT_ARCH:
        return None
    column = 0 if machine == "x86_64" else 1
    denied = sorted({nr for nrs in DENIED.values() if (nr := nrs[column]) is not None})
    # Symbolic program: ("jeq", value, label_true) jumps when equal and falls through otherwise;
    # labels: "deny", "nosys", "allow", "clone".
    body: list[tuple] = [("ld", OFFSET_ARCH), ("jne", AUDIT_ARCH[machine], "nosys"), ("ld", OFFSET_NR)]
    if machine == "x86_64":
        body.append(("jge", X32_SYSCALL_BIT, "nosys"))
    body.append(("jeq", CLONE[machine], "clone"))
    body.append(("jeq", CLONE3, "nosys"))
    body += [("jeq", nr, "deny") for nr in denied]
    body.append(("ret", SECCOMP_RET_ALLOW))
    tail: dict[str, list[tuple]] = {
        "clone": [("ld", OFFSET_ARG0), ("jset", CLONE_NAMESPACES, "deny"), ("ret", SECCOMP_RET_ALLOW)],
        "deny": [("ret", SECCOMP_RET_ERRNO | errno.EPERM)],
        "nosys": [("ret", SECCOMP_RET_ERRNO | errno.ENOSYS)],
    }
    program = list(body)
    labels: dict[str, int] = {}
    for name, block in tail.items():
        labels[name] = len(program)
        program += block
    out: list[tuple[int, int, int, int]] = []
    for pc, ins in enumerate(program):
        op = ins[0]
        if op == "ld":
            out.append((BPF_LD_W_ABS, 0, 0, ins[1]))
        elif op == "ret":
            out.append((BPF_RET_K, 0, 0, ins[1]))
        else:
            offset = labels[ins[2]] - pc - 1
            if not 0 <= offset <= 255:
                raise ValueError("seccomp filter too long for a one-byte jump")
            code = {"jeq": BPF_JEQ_K, "jne": BPF_JEQ_K, "jge": BPF_JGE_K, "jset": BPF_JSET_K}[op]
            # "jne": fall through when equal, jump to the label otherwise
            out.append((code, 0, offset, ins[1]) if op == "jne" else (code, offset, 0, ins[1]))
    return out


def install(libc: ctypes.CDLL) -> None:
    """Load the filter into this process (inherited by its children, kept across exec). Needs
    ``PR_SET_NO_NEW_PRIVS`` first (or CAP_SYS_ADMIN). Raises OSError if the kernel refuses it."""
    program = filter_program()
    if program is None:
        raise OSError(errno.ENOSYS, f"no seccomp system call table for {_machine()}")
    raw = b"".join(struct.pack("=HBBI", *ins) for ins in program)
    buffer = ctypes.create_string_buffer(raw, len(raw))

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = SockFprog(len(program), ctypes.addressof(buffer))
    if libc.prctl(PR_SET_SECCOMP, ctypes.c_ulong(SECCOMP_MODE_FILTER), ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter refused: {errno.errorcode.get(err, err)}")
