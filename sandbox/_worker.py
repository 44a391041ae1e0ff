"""The sandbox worker: a separate, pre-imported process that runs one program at a time (stdlib only).

Started by `sandbox.pool.Sandbox` as ``python -I _worker.py CONFIG_JSON`` with a scrubbed
environment. It talks to its parent over stdin/stdout with length-prefixed JSON frames:
``{"op": "batch", "runs": [...]}`` + the runs' job bytes -> ``{"results": [...], "healthy": bool}``
+ each run's raw result bytes (see `serve`); ``{"op": "capabilities"}`` -> what isolation it achieved.
The worker decides no verdict: it reports what it observed (how the run's processes ended, CPU and
wall time, stderr, the bytes the program's side wrote to the result pipe) and the caller judges
(`sandbox._verdict`).

At start-up (once per worker, see `_setup_worker`), as root:
* it becomes a child subreaper; it enters a new network namespace (no interfaces up: no network)
  and a private mount namespace;
* it claims a dedicated unprivileged uid (a lock file makes it unique on the machine) for its
  programs, and builds the file system they will see: every top-level directory that is not a
  system one (``/work``, ``/home``, ``/root``, ``/opt``, ``/mnt``, ...) and the directories in
  ``hide`` are covered by a 0755 tmpfs showing only the path to the Python installation (so no
  sibling project, data set or home is listable), ``/dev`` is a minimal tmpfs (null, zero, full,
  random, urandom, tty), and then every mount is remounted read-only, nosuid, nodev: no host path
  is writable by a program, whatever its mode (only ``/proc``, replaced per run, and the cgroup
  file systems, writable by root only, are left as they are);
* a memory and a pids cgroup (v1) below its own bound the totals of each run;
* it probes, in a throw-away child, what the kernel allows per run: new PID, mount and IPC
  namespaces, a fresh ``/proc``, the seccomp filter (`_seccomp`), and reports it in ``capabilities``.

Not root: a user namespace gives the same network and mount isolation where the kernel allows it
(no uid change; programs lose the namespace's capabilities), without a per-run PID namespace; every
gap is listed in the capabilities' ``warnings``.

Per run (`Worker.run`): the job and the stderr are memfds, the result channel a pipe whose write
end becomes the program's fd 3 (it can append, never read, rewind or truncate; the pipe belongs to
root, so it cannot be reopened through ``/proc``). The worker forks the run's init (``C``) into a new
PID namespace; ``C`` joins the cgroups, enters new mount and IPC namespaces, mounts one fresh tmpfs
(``tmp_mb``, bounded inode count) that provides ``/tmp``, ``/var/tmp``, ``/dev/shm`` and
``/run/lock``, mounts a ``/proc`` of the new PID namespace (hidepid=2: the program sees only its own
processes), and forks the program's process ``P``, which closes every other descriptor, scrubs its
environment, sets rlimits (CPU, AS, NPROC, FSIZE, NOFILE, CORE=0), drops to the run uid, sets no
new privileges and a parent-death signal, installs the seccomp filter and runs `_harness` (or execs
a fresh interpreter on it in spawn mode). ``C`` reaps every process of the run and, when ``P``
ends, reports its status and exits; the kernel then kills whatever is left in the namespace. At the
wall-clock limit the worker kills ``C``, which takes the whole namespace with it. Nothing of a run
outlives it: its files were on its own tmpfs, its SysV/POSIX IPC objects in its own namespace, its
processes in its own PID namespace; there is no recursive removal to break. A worker that finds
anything left (a process, a descriptor) after a run says so and is replaced by the pool.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import json
import math
import os
import resource
import select
import signal
import stat
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _harness  # noqa: E402  (pre-imported: fork-server children use it directly)
import _seccomp  # noqa: E402

# What most test programs import, loaded once. Kept lean on purpose: a fork copies the worker's page
# tables, so heavy modules (unittest.mock pulls in asyncio: 2-3x the fork cost) are left to the child.
PREIMPORTS = (
    "abc bisect collections collections.abc copy dataclasses functools heapq itertools json math operator "
    "random re string typing unittest"
).split()

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_FLAGS = {
    "ro": MS_RDONLY,
    "nosuid": MS_NOSUID,
    "nodev": MS_NODEV,
    "noexec": MS_NOEXEC,
    "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME,
    "relatime": MS_RELATIME,
    "strictatime": MS_STRICTATIME,
}
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
F_SETPIPE_SZ = 1031
SYSTEM_DIRS = {
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
}
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SCRATCH_ROOT = "/run"  # the run's tmpfs; its subdirectories are bound onto the scratch places
SCRATCH_BINDS = (("tmp", "/tmp"), ("var-tmp", "/var/tmp"), ("shm", "/dev/shm"))
WORKDIR = "/tmp/restrl-run"
CGROUP_ROOT = "/sys/fs/cgroup"
SCRATCH_INODES = 16384  # files and directories a run may create (its tmpfs's nr_inodes)
SETUP_FAILED = 121  # exit status of the run's init when our isolation setup failed
READY = b"R"  # written by the program's process once its setup is done, before any program code
STATUS = struct.Struct("=cid")  # b"S", the program process's wait status, its CPU seconds
PROBE_BITS = {"run_ns": 1, "proc": 2, "seccomp": 4}

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def _setns(fd: int, nstype: int) -> None:
    _check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def _prctl(option: int, value: int) -> None:
    _check(_libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), "prctl")


def _read_frame(fd: int) -> dict | None:
    header = _read_exact(fd, 4)
    if header is None:
        return None
    body = _read_exact(fd, struct.unpack(">I", header)[0])
    return None if body is None else json.loads(body)


def _read_exact(fd: int, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _write_frame(fd: int, obj: dict, raw: list[bytes] | None = None) -> None:
    body = json.dumps(obj).encode()
    _write_all(fd, struct.pack(">I", len(body)) + body)
    for blob in raw or []:
        _write_all(fd, blob)


def _world_traversable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return False


def _mountinfo() -> list[tuple[str, int]]:
    """(mount point, per-mount flags) of every mount of this mount namespace, in mount order."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4].encode().decode("unicode_escape")  # \040 etc.
            flags = 0
            for option in fields[5].split(","):
                flags |= MNT_FLAGS.get(option, 0)
            out.append((point, flags))
    return out


def _under(path: str, roots: set[str] | list[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def _fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def remove_tree(path: str) -> None:
    """Remove ``path`` and everything below it without recursion and without long paths: one
    directory descriptor at a time (any depth), each directory scanned once (any number of
    entries), modes reset before entering (any mode), FIFOs and sockets unlinked, never opened.
    Raises OSError if something cannot be removed."""
    if not os.path.lexists(path):
        return
    if not stat.S_ISDIR(os.lstat(path).st_mode):
        os.unlink(path)
        return
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    os.chmod(path, 0o700)
    fd = os.open(path, flags)
    trail: list[tuple[str, list[str]]] = []  # (name in the parent, subdirectories still to remove)
    name = ""
    try:
        while True:
            subdirs = []
            with os.scandir(fd) as entries:
                for entry in entries:
                    if entry.is_dir(follow_symlinks=False):
                        subdirs.append(entry.name)
                    else:
                        os.unlink(entry.name, dir_fd=fd)
            trail.append((name, subdirs))
            while len(trail) > 1 and not trail[-1][1]:
                done, _ = trail.pop()
                parent = os.open("..", flags, dir_fd=fd)
                os.close(fd)
                fd = parent
                os.rmdir(done, dir_fd=fd)
            if not trail[-1][1]:
                break
            name = trail[-1][1].pop()
            os.chmod(name, 0o700, dir_fd=fd)
            child = os.open(name, flags, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    os.rmdir(path)

class Worker:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.notes: list[str] = []  # how isolation was achieved here
        self.warnings: list[str] = []  # protections this machine did not allow
        self.caps: dict = {
            "root": os.geteuid() == 0,
            "netns": False,
            "userns": False,
            "mountns": False,
            "pidns": False,
            "ipcns": False,
            "private_proc": False,
            "private_tmp": False,
            "readonly_root": False,
            "hidden_top_dirs": [],
            "seccomp": False,
            "result_channel": "pipe",
            "uid_drop": False,
            "run_uid": os.geteuid(),
            "cleanup": "process_group+children",
            "rlimits": ["CPU", "AS", "NPROC", "FSIZE", "NOFILE", "CORE"],
            "fork_server": config.get("mode") == "forkserver",
            "notes": self.notes,
            "warnings": self.warnings,
            "cgroups": [],
        }
        self.uid_lock: int | None = None
        self.cgroups: dict[str, str] = {}  # controller -> this worker's cgroup directory
        self.own_pidns: int | None = None  # fd of the worker's own PID namespace (reset after a fork)
        self.run_ns = False  # per-run mount + IPC namespaces
        self.healthy = True
        self.fd_baseline = 0
        self._setup_worker()

    # ---- start-up -----------------------------------------------------------------------
    def _setup_worker(self) -> None:
        for name in PREIMPORTS:
            try:
                __import__(name)
            except ImportError:
                self.notes.append(f"could not pre-import {name}")
        try:
            _prctl(PR_SET_CHILD_SUBREAPER, 1)
        except OSError as exc:
            self.warnings.append(f"no child subreaper ({exc}): orphans of a program may escape cleanup")
        if self.caps["root"]:
            self._setup_as_root()
        else:
            self._setup_unprivileged()
        self._probe()
        if not self.caps["netns"]:
            self.warnings.append("no network namespace: programs can reach the network")
        if not self.caps["private_tmp"]:
            self.warnings.append(
                "no per-run scratch file system: programs write the host's /tmp (removed after each run)"
            )
        if not self.caps["readonly_root"]:
            self.warnings.append("host paths writable by every user are writable by programs")
        if not self.caps["ipcns"]:
            self.warnings.append("no per-run IPC namespace: SysV and POSIX IPC objects are shared")
        if not self.caps["private_proc"]:
            self.warnings.append("no per-run PID namespace: /proc shows the host's processes")
        if not self.caps["seccomp"]:
            self.warnings.append("no seccomp filter: user namespaces and risky system calls are not blocked")
        if not self.caps["uid_drop"]:
            self.caps["rlimits"].remove("NPROC")
            self.caps["result_channel"] = "pipe (readable by programs: same uid as the worker)"
            self.warnings.append(
                "no dedicated uid: programs run as the worker's own user (no RLIMIT_NPROC, since it would count "
                "all of that user's processes; files that user can write are writable by programs, and a program "
                "could reopen its result pipe)"
            )
        self.fd_baseline = _fd_count()

    def _setup_as_root(self) -> None:
        try:
            _unshare(CLONE_NEWNET | CLONE_NEWNS)
            self.caps["netns"] = self.caps["mountns"] = True
        except OSError as exc:
            self.notes.append(f"unshare(NEWNET|NEWNS) refused: {exc}")
            try:
                _unshare(CLONE_NEWNET)
                self.caps["netns"] = True
            except OSError as exc2:
                self.notes.append(f"unshare(NEWNET) refused: {exc2}")
        if self.caps["mountns"]:
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
        uid = self._claim_uid()
        if uid is None:
            return
        if self.caps["mountns"]:
            try:
                self._expose_runtime()
                self._minimal_dev()
                self._read_only()
            except OSError as exc:
                self.warnings.append(f"could not build the programs' file system view: {exc}")
        if self._runtime_reachable():
            self.caps["uid_drop"] = True
            self.caps["run_uid"] = uid
            self.caps["cleanup"] = "process_group+uid"
            self._kill_uid(uid)  # leftovers of a previous holder of this uid (reparented to init)
            self._setup_cgroups(uid)
        else:
            self.warnings.append("the Python installation is not reachable by an unprivileged uid")
        try:
            self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            self.notes.append(f"no PID namespace handle: {exc}")

    def _setup_unprivileged(self) -> None:
        """Not root: a user namespace for the network and mount namespaces; programs keep the
        worker's uid and lose the capabilities the namespace gave it (see `_program`)."""
        uid, gid = os.getuid(), os.getgid()
        try:
            _unshare(CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWNS)
        except OSError as exc:
            self.warnings.append(f"user namespace refused ({exc})")
            return
        self.caps["userns"] = self.caps["netns"] = self.caps["mountns"] = True
        try:
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"{uid} {uid} 1")
            with open("/proc/self/gid_map", "w") as f:
                f.write(f"{gid} {gid} 1")
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            self._expose_runtime()
            self._minimal_dev()
            self._read_only()
        except OSError as exc:
            self.notes.append(f"user namespace set-up incomplete: {exc}")

    def _probe(self) -> None:
        """Try the per-run isolation once in a throw-away child (what `run` will do), so that
        `capabilities` reports what is really in force."""
        pidns = self._enter_new_pidns()
        try:
            pid = os.fork()
        except OSError as exc:
            self.notes.append(f"probe fork failed: {exc}")
            pid = -1
        if pid != 0 and pidns:
            self._leave_new_pidns()
        if pid < 0:
            return
        if pid == 0:
            bits = 0
            try:
                if self.caps["mountns"]:
                    self._run_mounts(pidns)
                    bits |= PROBE_BITS["run_ns"]
                    if pidns:
                        bits |= PROBE_BITS["proc"]
            except BaseException:
                pass
            try:
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
                _seccomp.install(_libc)
                if _libc.unshare(ctypes.c_int(CLONE_NEWUSER)) != 0 and ctypes.get_errno() == errno.EPERM:
                    bits |= PROBE_BITS["seccomp"]
            except BaseException:
                pass
            os._exit(bits)
        _, status = os.waitpid(pid, 0)
        bits = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0
        self.run_ns = bool(bits & PROBE_BITS["run_ns"])
        self.caps["ipcns"] = self.caps["private_tmp"] = self.run_ns
        self.caps["pidns"] = self.caps["private_proc"] = pidns and bool(bits & PROBE_BITS["proc"])
        self.caps["seccomp"] = bool(bits & PROBE_BITS["seccomp"])
        if pidns and not self.caps["pidns"]:
            self.notes.append("a PID namespace per run works, but not its /proc: not used")
        if self.caps["pidns"]:
            self.caps["cleanup"] = "pid_namespace"
        elif not pidns and self.own_pidns is not None:
            os.close(self.own_pidns)
            self.own_pidns = None
        if not self.run_ns and self.caps["mountns"]:
            self._worker_scratch()

    def _worker_scratch(self) -> None:
        """No per-run namespaces but a private one for the worker: fresh tmpfs scratch places for
        this worker's runs, emptied (`remove_tree`) after each run."""
        size = int(self.config.get("tmp_mb", 256))
        try:
            for _, target in SCRATCH_BINDS:
                if os.path.isdir(target):
                    _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=1777")
            self.caps["private_tmp"] = "per worker"
        except OSError as exc:
            self.notes.append(f"no private scratch space: {exc}")

    def _enter_new_pidns(self) -> bool:
        """Make the next fork the init of a new PID namespace (the worker itself stays in its own)."""
        if self.own_pidns is None:
            return False
        try:
            _unshare(CLONE_NEWPID)
        except OSError as exc:
            self.notes.append(f"unshare(NEWPID) refused: {exc}")
            os.close(self.own_pidns)
            self.own_pidns = None
            return False
        return True

    def _leave_new_pidns(self) -> None:
        assert self.own_pidns is not None
        _setns(self.own_pidns, CLONE_NEWPID)

    def _setup_cgroups(self, uid: int) -> None:
        """A cgroup (v1 memory and pids controllers) per worker, below the worker's own: it bounds a
        run's total memory and process count, whatever the number of processes (RLIMIT_AS is per
        process), and measures its peak memory."""
        own: dict[str, str] = {}
        with open("/proc/self/cgroup") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                for controller in controllers.split(","):
                    own[controller] = path
        for controller, limit_file in (("memory", "memory.limit_in_bytes"), ("pids", "pids.max")):
            base = f"/sys/fs/cgroup/{controller}{own.get(controller, '/')}"
            if controller not in own or not os.path.isdir(base):
                self.warnings.append(f"no cgroup v1 '{controller}' controller: no per-run {controller} total")
                continue
            path = os.path.join(base, f"restrl-sandbox-{uid}")
            try:
                os.makedirs(path, exist_ok=True)
                if not os.path.exists(os.path.join(path, limit_file)):
                    raise OSError(errno.ENOENT, f"no {limit_file}")
                self.cgroups[controller] = path
            except OSError as exc:
                self.warnings.append(f"cannot create a '{controller}' cgroup: {exc}")
        self.caps["cgroups"] = sorted(self.cgroups)

    def _cgroup_write(self, controller: str, name: str, value: str) -> None:
        with open(os.path.join(self.cgroups[controller], name), "w") as f:
            f.write(value)

    def _cgroup_limits(self, limits: dict) -> None:
        try:
            if "memory" in self.cgroups:
                limit = str(int(limits["memory_mb"]) << 20)
                try:
                    self._cgroup_write("memory", "memory.limit_in_bytes", limit)
                except OSError:  # charges left below the new limit: drop them, then retry
                    self._cgroup_write("memory", "memory.force_empty", "0")
                    self._cgroup_write("memory", "memory.limit_in_bytes", limit)
                self._cgroup_write("memory", "memory.max_usage_in_bytes", "0")
            if "pids" in self.cgroups:  # + the run's init
                self._cgroup_write("pids", "pids.max", str(int(limits["max_procs"]) + 1))
        except OSError as exc:
            note = f"cgroup limits not applied: {exc}"
            if note not in self.warnings:
                self.warnings.append(note)

    def _memory_peak_mb(self) -> float | None:
        if "memory" not in self.cgroups:
            return None
        with open(os.path.join(self.cgroups["memory"], "memory.max_usage_in_bytes")) as f:
            return int(f.read()) / (1 << 20)

    def _cgroups_empty(self) -> bool:
        for path in self.cgroups.values():
            with open(os.path.join(path, "cgroup.procs")) as f:
                if f.read().strip():
                    return False
        return True

    def close(self) -> None:
        for path in self.cgroups.values():
            try:
                os.rmdir(path)
            except OSError:
                pass

    def _claim_uid(self) -> int | None:
        base, count = int(self.config.get("uid_base", 61000)), int(self.config.get("uid_count", 512))
        lock_dir = self.config.get("uid_lock_dir", "/run/restrl-sandbox")
        try:
            os.makedirs(lock_dir, mode=0o700, exist_ok=True)
        except OSError as exc:
            self.notes.append(f"no uid lock directory {lock_dir}: {exc}")
            return None
        for uid in range(base, base + count):
            fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.uid_lock = fd
            return uid
        self.notes.append(f"no free uid in {base}..{base + count - 1}")
        return None

    # ---- the programs' view of the file system (once per worker) -------------------------------
    def _runtime_candidates(self) -> set[str]:
        """What a program's process needs to find: the interpreter, the standard library, the
        site-packages, this directory (as given and resolved: a venv may be a symlink)."""
        paths = {sys.executable, HERE, sys.base_prefix, sys.prefix, *(p for p in sys.path if p)}
        out = set()
        for path in paths:
            if os.path.isabs(path) and os.path.exists(path):
                out.add(os.path.normpath(path))
                out.add(os.path.realpath(path))
        return out

    def _hidden(self) -> set[str]:
        """Directories to cover in the worker's mount namespace: those in ``hide`` (the caller's
        working directory and home by default), every top-level directory that is not a system one,
        and, below those, every directory on the way to the runtime (each then shows only the next
        step of that way): data, hidden tests, secrets and sibling projects stay out of sight."""
        hidden = set()
        for path in self.config.get("hide", []):
            real = os.path.realpath(path)
            if real != "/" and real not in SYSTEM_DIRS and os.path.isdir(real):
                hidden.add(real)
        for name in os.listdir("/"):
            path = "/" + name
            if path not in SYSTEM_DIRS and os.path.isdir(path) and not os.path.islink(path):
                hidden.add(path)
        runtime = self._runtime_candidates()
        for path in sorted(runtime):
            parts = path.split("/")
            for depth in range(2, len(parts)):
                ancestor = "/".join(parts[:depth])
                if _under(ancestor, hidden) and not _under(ancestor, runtime):
                    hidden.add(ancestor)
        return {h for h in hidden if not _under(h, runtime) or h in self.config.get("hide", [])}

    def _runtime_paths(self) -> list[str]:
        hidden = self._hidden()
        return sorted(p for p in self._runtime_candidates() if p not in hidden)

    def _runtime_reachable(self) -> bool:
        for path in self._runtime_paths():
            parts = path.split("/")
            for depth in range(2, len(parts) + 1):
                ancestor = "/".join(parts[:depth])
                if os.path.isdir(ancestor) and not _world_traversable(ancestor):
                    return False
        return True

    def _expose_runtime(self) -> None:
        """Inside our private mount namespace: cover each closed directory on the way to the Python
        installation, and each hidden one, with a 0755 tmpfs holding bind mounts of only the needed
        entries (none for a hidden directory the runtime does not go through); top-level files
        that are not the system's read as empty."""
        hidden = self._hidden()
        runtime = self._runtime_paths()
        covered: set[str] = set()
        for _ in range(32):
            blocked: dict[str, set[str]] = {}
            for path in runtime:
                parts = path.split("/")
                for depth in range(2, len(parts)):
                    ancestor = "/".join(parts[:depth])
                    if ancestor in covered:
                        continue
                    if ancestor in hidden or not _world_traversable(ancestor):
                        blocked.setdefault(ancestor, set()).add(parts[depth])
                        break
            for path in hidden - covered:
                if os.path.isdir(path) and not any(
                    path.startswith(b + "/") for b in blocked
                ):  # else covered in a later pass
                    blocked.setdefault(path, set())
            if not blocked:
                break
            for ancestor, names in sorted(blocked.items()):
                if any(ancestor.startswith(c + "/") for c in blocked if c != ancestor):
                    continue  # below another directory covered in this pass: next pass
                self._cover(ancestor, names)
                covered.add(ancestor)
        else:
            raise OSError(errno.ELOOP, "could not expose the Python installation")
        top = sorted(c for c in covered if c.count("/") == 1)
        self.caps["hidden_top_dirs"] = top
        self.notes.append(f"programs see only the way to the Python installation in {top}")

    @staticmethod
    def _cover(directory: str, names: set[str]) -> None:
        fds = {n: os.open(os.path.join(directory, n), os.O_PATH | os.O_CLOEXEC) for n in names}
        try:
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,nr_inodes=64,mode=755")
            for name, fd in fds.items():
                target = os.path.join(directory, name)
                if stat.S_ISDIR(os.fstat(fd).st_mode):
                    os.mkdir(target)
                else:
                    open(target, "w").close()
                _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        finally:
            for fd in fds.values():
                os.close(fd)

    def _minimal_dev(self) -> None:
        """``/dev`` with only the harmless character devices (no GPU, kvm, tun, disks, ptys, log
        socket) and an empty ``shm`` for the per-run scratch space."""
        fds = {n: os.open(f"/dev/{n}", os.O_PATH | os.O_CLOEXEC) for n in DEVICES if os.path.exists(f"/dev/{n}")}
        try:
            _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,nr_inodes=64,mode=755")
            for name, fd in fds.items():
                open(f"/dev/{name}", "w").close()
                _mount(f"/proc/self/fd/{fd}", f"/dev/{name}", None, MS_BIND)
        finally:
            for fd in fds.values():
                os.close(fd)
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
            os.symlink(target, f"/dev/{name}")
        os.mkdir("/dev/shm")
        os.chmod("/dev/shm", 0o1777)
        # top-level files that are not the system's (container descriptions, installers) read as empty
        empty = "/dev/.empty"
        open(empty, "w").close()
        os.chmod(empty, 0o444)
        for name in os.listdir("/"):
            path = "/" + name
            if os.path.isfile(path) and not os.path.islink(path):
                _mount(empty, path, None, MS_BIND)

    def _read_only(self) -> None:
        """Remount every mount of the worker's namespace read-only, nosuid and (outside /dev)
        nodev: no host path is writable by a program whatever its mode (world-writable files,
        directories). /proc is replaced per run; cgroup file systems stay writable (for root)."""
        refused = []
        for point, flags in _mountinfo():
            if _under(point, ["/proc", "/sys/fs/cgroup"]):
                continue
            extra = MS_RDONLY | MS_NOSUID | (0 if _under(point, ["/dev"]) else MS_NODEV)
            try:
                _mount("none", point, None, MS_BIND | MS_REMOUNT | flags | extra)
            except OSError as exc:
                refused.append(f"{point} ({exc.strerror})")
        writable = []
        for point, _ in _mountinfo():
            if _under(point, ["/proc", "/sys/fs/cgroup"]):
                continue
            try:
                if not os.statvfs(point).f_flag & os.ST_RDONLY:
                    writable.append(point)
            except OSError:  # below a covered directory: out of sight
                pass
        self.caps["readonly_root"] = not writable
        if writable:
            self.warnings.append(f"mounts left writable: {writable[:8]}")
        if refused:
            self.notes.append(f"not remounted read-only (shadowed or refused): {refused[:8]}")

    # ---- one run ------------------------------------------------------------------------------
    def run(self, req: dict, job_bytes: bytearray) -> tuple[dict, bytes]:
        """One run: (report, result bytes). ``req`` holds the mode, limits and result cap;
        ``job_bytes`` (the program, tests and entry point as JSON) goes to the child in a memfd and
        is zeroed here, never parsed: no earlier run's program or tests linger in this process's
        memory for a later fork-server child to find. Every descriptor opened here is closed on
        every path (`_fds`)."""
        limits = req["limits"]
        fds: list[int] = []
        workdir = WORKDIR if self.run_ns else None
        try:
            job_fd = os.memfd_create("job", os.MFD_CLOEXEC)
            fds.append(job_fd)
            with memoryview(job_bytes) as view:
                _write_all(job_fd, view)
            job_bytes[:] = bytes(len(job_bytes))
            os.lseek(job_fd, 0, os.SEEK_SET)
            err_fd = os.memfd_create("stderr", os.MFD_CLOEXEC)
            fds.append(err_fd)
            res_r, res_w = os.pipe2(os.O_CLOEXEC)
            fds += [res_r, res_w]
            ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
            fds += [ctl_r, ctl_w]
            try:
                fcntl.fcntl(res_r, F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            if workdir is None:  # no per-run scratch file system: a directory on the host's /tmp
                workdir = f"/tmp/restrl-run-{os.getpid()}-{time.monotonic_ns()}"
                os.mkdir(workdir, 0o700)
                if self.caps["uid_drop"]:
                    os.chown(workdir, self.caps["run_uid"], self.caps["run_uid"])
            self._cgroup_limits(limits)
            started = time.monotonic()
            gc.freeze()  # the child's garbage collector then never touches (and copies) the worker's pages
            pidns = self.caps["pidns"] and self._enter_new_pidns()
            try:
                pid = os.fork()
            except OSError as exc:
                pid, failure = -1, f"fork failed: {exc}"
            if pid != 0 and pidns:
                self._leave_new_pidns()
            if pid < 0:
                return {"infra": failure}, b""
            if pid == 0:
                self._init(req.get("mode", "forkserver"), limits, workdir, job_fd, err_fd, res_w, ctl_w)
            for fd in (job_fd, res_w, ctl_w):
                fds.remove(fd)
                os.close(fd)
            return self._supervise(pid, limits, int(req["result_cap"]), started, res_r, ctl_r, err_fd)
        finally:
            for fd in fds:
                os.close(fd)
            if workdir is not None and not self.run_ns:
                self._empty_scratch(workdir)

    def _init(
        self, mode: str, limits: dict, workdir: str, job_fd: int, err_fd: int, res_w: int, ctl_w: int
    ) -> None:
        """The run's init (PID 1 of its PID namespace when the machine allows it), in the forked
        child, still root: isolate the run, start the program's process, reap every process of the
        run until the program's process ends, report its status. Never returns."""
        try:
            os.setsid()
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # the worker dies: the run dies
            for path in self.cgroups.values():
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            if self.run_ns:
                self._run_mounts(self.caps["pidns"])
                os.mkdir(workdir, 0o700)
                if self.caps["uid_drop"]:
                    os.chown(workdir, self.caps["run_uid"], self.caps["run_uid"])
            program = os.fork()
        except BaseException as exc:
            try:
                os.write(err_fd, f"sandbox setup failed: {exc!r}\n".encode())
            finally:
                os._exit(SETUP_FAILED)
        if program == 0:
            self._program(mode, limits, workdir, job_fd, err_fd, res_w, ctl_w)
        try:
            os.closerange(3, ctl_w)
            os.closerange(ctl_w + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            while True:
                pid, status, usage = os.wait4(-1 if self.caps["pidns"] else program, 0)
                if pid == program:
                    break
            _write_all(ctl_w, STATUS.pack(b"S", status, usage.ru_utime + usage.ru_stime))
        finally:
            os._exit(0)

    def _run_mounts(self, proc: bool) -> None:
        """In the run's init: new mount and IPC namespaces, one tmpfs for all the run's scratch
        places (one size limit, a bounded number of files; gone with the namespace), and a /proc
        of the run's own PID namespace."""
        _unshare(CLONE_NEWNS | CLONE_NEWIPC)
        size = int(self.config.get("tmp_mb", 256))
        _mount(
            "tmpfs", SCRATCH_ROOT, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,nr_inodes={SCRATCH_INODES},mode=755"
        )
        for name in ("lock", *(n for n, _ in SCRATCH_BINDS)):
            os.mkdir(os.path.join(SCRATCH_ROOT, name))
            os.chmod(os.path.join(SCRATCH_ROOT, name), 0o1777)
        for name, target in SCRATCH_BINDS:
            if os.path.isdir(target):
                _mount(os.path.join(SCRATCH_ROOT, name), target, None, MS_BIND)
        if proc:
            _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "hidepid=2")
        if os.path.isdir(CGROUP_ROOT):  # the worker writes there, programs have nothing to read there
            _mount("tmpfs", CGROUP_ROOT, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k,mode=755")

    def _program(
        self, mode: str, limits: dict, workdir: str, job_fd: int, err_fd: int, res_w: int, ctl_w: int
    ) -> None:
        """The program's process: drop everything, then run the harness on the job. Never returns."""
        try:
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err_fd, 2)
            os.dup2(res_w, _harness.RESULT_FD)
            os.dup2(job_fd, _harness.JOB_FD)
            ready = os.dup2(ctl_w, _harness.JOB_FD + 1)
            os.closerange(_harness.JOB_FD + 2, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            os.set_inheritable(ready, False)
            os.chdir(workdir)
            env = {
                "PATH": "/usr/local/bin:/usr/bin:/bin",
                "HOME": workdir,
                "TMPDIR": workdir,
                "LANG": "C.UTF-8",
                "PYTHONDONTWRITEBYTECODE": "1",
                "PYTHONHASHSEED": "0",
                "OPENBLAS_NUM_THREADS": "1",
                "OMP_NUM_THREADS": "1",
            }
            os.environ.clear()
            os.environ.update(env)
            cpu = max(1, math.ceil(limits["cpu_s"]))
            mem = int(limits["memory_mb"]) << 20
            fsize = int(limits["max_file_mb"]) << 20
            resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
            resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
            resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
            if self.caps["uid_drop"]:
                resource.setrlimit(resource.RLIMIT_NPROC, (limits["max_procs"],) * 2)
                uid = self.caps["run_uid"]
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            elif self.caps["userns"]:
                _drop_capabilities()
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            if self.caps["seccomp"]:
                _seccomp.install(_libc)
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            # the signal dispositions of a fresh interpreter
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
            sys_path = [p for p in sys.path if p != HERE]
            if mode == "spawn":
                harness = os.path.join(HERE, "_harness.py")
                argv = [sys.executable, "-I", "-S", harness, json.dumps(sys_path)]
                os.write(ready, READY)
                os.execve(sys.executable, argv, os.environ)
            os.write(ready, READY)
            os.close(ready)
        except BaseException as exc:  # our machinery failed: say so on stderr, exit with our code
            try:
                os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
            finally:
                os._exit(SETUP_FAILED)
        try:  # from here on, the program's code runs: nothing it does is our failure
            sys.path[:] = sys_path
            sys.argv = ["<program>"]
            _harness.main(_harness.read_job())
            _harness._flush_std()
        except BaseException:
            os._exit(1)
        os._exit(0)

    def _supervise(
        self, pid: int, limits: dict, cap: int, started: float, res_r: int, ctl_r: int, err_fd: int
    ) -> tuple[dict, bytes]:
        """Read the result pipe while the run lasts (up to ``cap`` bytes), until its init exits or
        the wall-clock deadline; then kill what is left and gather the facts."""
        deadline = started + float(limits["wall_s"])
        wall_killed = False
        overflow = False
        results = bytearray()
        os.set_blocking(res_r, False)
        pidfd = os.pidfd_open(pid)
        try:
            watched = [pidfd, res_r]
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    wall_killed = True
                    break
                ready = select.select(watched, [], [], remaining)[0]
                if res_r in ready and not self._drain(res_r, results, cap):
                    if len(results) > cap:
                        overflow = True
                        break
                    watched = [pidfd]  # every writer closed it
                if pidfd in ready:
                    break
        finally:
            os.close(pidfd)
        try:
            if self.caps["pidns"]:
                os.kill(pid, signal.SIGKILL)  # the kernel then kills the whole PID namespace
            else:
                os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, init_status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - started
        self._sweep()
        if not overflow:  # every writer is gone by now: read to the end (or the cap)
            self._drain(res_r, results, cap)
            overflow = len(results) > cap
        ctl = b""
        os.set_blocking(ctl_r, False)
        try:
            ctl = os.read(ctl_r, 64)
        except BlockingIOError:
            pass
        stderr = os.pread(err_fd, int(limits["max_stderr_bytes"]), 0) if limits["max_stderr_bytes"] else b""
        report: dict = {
            "stderr": stderr.decode("utf-8", errors="replace"),
            "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "wall_killed": wall_killed,
            "overflow": cap if overflow else 0,
            "memory_peak_mb": self._memory_peak_mb(),
        }
        init_failed = os.WIFEXITED(init_status) and os.WEXITSTATUS(init_status) == SETUP_FAILED
        status_record = ctl[1:] if ctl[:1] == READY else ctl
        if len(status_record) == STATUS.size and status_record[:1] == b"S":
            _, status, program_cpu = STATUS.unpack(status_record)
            if os.WIFSIGNALED(status):
                sig = os.WTERMSIG(status)
                report["signal"] = sig
                report["cpu_killed"] = sig == signal.SIGXCPU or (
                    sig == signal.SIGKILL and program_cpu >= math.ceil(limits["cpu_s"]) - 0.05
                )
            else:
                report["exit_code"] = os.WEXITSTATUS(status)
            if ctl[:1] != READY and not wall_killed:  # the program's process failed before any program code
                init_failed = True
        if init_failed:
            report = {"infra": f"sandbox setup failed: {report['stderr'][-500:]}", "stderr": report["stderr"]}
        return report, bytes(results[: cap + 1])

    @staticmethod
    def _drain(fd: int, into: bytearray, cap: int) -> bool:
        """Read what the pipe holds; False at its end (every writer gone) or past ``cap``."""
        while len(into) <= cap:
            try:
                chunk = os.read(fd, 1 << 20)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            into += chunk
        return False

    def _empty_scratch(self, workdir: str) -> None:
        """Without a per-run file system: remove the run's directory and, where the scratch places
        are the worker's own, everything in them; a failure makes the worker unhealthy."""
        places = [workdir]
        if self.caps["private_tmp"]:
            for _, base in SCRATCH_BINDS:
                if os.path.isdir(base):
                    places += [os.path.join(base, name) for name in os.listdir(base)]
        for place in places:
            try:
                remove_tree(place)
            except OSError as exc:
                self._unhealthy(f"could not remove {place}: {exc}")

    def _unhealthy(self, why: str) -> None:
        self.healthy = False
        self.warnings.append(why)

    def check_health(self) -> bool:
        """After a batch: nothing of any run may be left (a process, a descriptor, a cgroup member);
        a worker that finds something says so and exits, and the pool starts a fresh one."""
        if self._leftovers():
            self._unhealthy("processes of a run survived cleanup")
        try:
            if not self._cgroups_empty():
                self._unhealthy("a run's cgroup is not empty")
        except OSError as exc:
            self._unhealthy(f"cannot read the run cgroups: {exc}")
        if _fd_count() != self.fd_baseline:
            self._unhealthy(f"descriptors leaked: {_fd_count()} open, {self.fd_baseline} at start")
        return self.healthy

    # ---- cleanup ------------------------------------------------------------------------------
    def _leftovers(self) -> bool:
        """Reap what has exited; True while the worker still has children. Every process a run
        leaves behind is a descendant of the worker (a child subreaper), so none means none left."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True

    def _kill_uid(self, uid: int) -> None:
        """Kill every process of ``uid``: a helper with that uid calls kill(-1, SIGKILL), which the
        kernel applies to all of them in one pass under the task-list lock (no fork can slip by)."""
        helper = os.fork()
        if helper == 0:
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            except BaseException:
                os._exit(1)
            os._exit(0)
        os.waitpid(helper, 0)

    def _kill_children(self) -> None:
        """Without a dedicated uid: SIGKILL the worker's children (orphans of the run reparent to it)."""
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/children") as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

    def _sweep(self) -> None:
        """After a run: kill and reap everything it left behind (detached daemons included). With
        a PID namespace per run there is nothing left by now (the kernel killed the namespace)."""
        for attempt in range(1000):
            if not self._leftovers():
                return
            if self.caps["uid_drop"]:
                self._kill_uid(self.caps["run_uid"])
            else:
                self._kill_children()
            if attempt:
                time.sleep(0.001)
        self._unhealthy("processes of a run survived cleanup")


def _drop_capabilities() -> None:
    """capset(2) with empty sets: no capabilities left (those a user namespace grants included)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    _check(_libc.capset(header, data), "capset")


def main() -> None:
    config = json.loads(sys.argv[1])
    proto_in = os.dup(0)
    proto_out = os.dup(1)
    for fd in (proto_in, proto_out):
        os.set_inheritable(fd, False)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)  # stray prints must never corrupt the protocol
    os.close(null)
    worker = Worker(config)
    _write_frame(proto_out, {"ready": True, "capabilities": worker.caps})
    try:
        serve(worker, proto_in, proto_out)
    finally:
        worker.close()


def _read_raw(fd: int, size: int) -> bytearray | None:
    """``size`` bytes read straight into one buffer (no intermediate copies left in freed memory)."""
    buf = bytearray(size)
    with memoryview(buf) as view:
        done = 0
        while done < size:
            n = os.readv(fd, [view[done:]])
            if n == 0:
                return None
            done += n
    return buf


def serve(worker: Worker, proto_in: int, proto_out: int) -> None:
    """``{"op": "batch", "runs": [{mode, limits, result_cap, job_len}, ...]}`` followed by the
    runs' job JSON bytes back to back -> ``{"results": [report, ...], "healthy": bool}`` followed
    by each report's ``result_len`` result bytes. An unhealthy worker exits after answering."""
    while True:
        req = _read_frame(proto_in)
        if req is None or req.get("op") == "exit":
            return
        if req.get("op") == "capabilities":
            _write_frame(proto_out, worker.caps)
            continue
        reports: list[dict] = []
        blobs: list[bytes] = []
        for run in req["runs"]:
            job_bytes = _read_raw(proto_in, int(run["job_len"]))
            if job_bytes is None:
                return
            try:
                report, blob = worker.run(run, job_bytes)
            except BaseException as exc:  # report, keep serving (the health check decides)
                worker._unhealthy(f"worker error: {exc!r}")
                report, blob = {"infra": f"worker error: {exc!r}"}, b""
            finally:
                job_bytes[:] = bytes(len(job_bytes))
            report["result_len"] = len(blob)
            reports.append(report)
            blobs.append(blob)
        healthy = worker.check_health()
        _write_frame(proto_out, {"results": reports, "healthy": healthy}, blobs)
        if not healthy:
            return


if __name__ == "__main__":
    main()
