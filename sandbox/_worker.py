"""The sandbox worker: a separate, pre-imported process that runs one program at a time (stdlib only).

Started by `sandbox.pool.Sandbox` as ``python -I _worker.py CONFIG_JSON`` with a scrubbed
environment. It talks to its parent over stdin/stdout with length-prefixed JSON frames:
``{"op": "batch", "runs": [...]}`` + the runs' job bytes -> ``{"results": [...]}`` (see `serve`),
``{"op": "capabilities"}`` -> what isolation it achieved.

At start-up (once per worker, see `_setup_worker`):
* it becomes a child subreaper, so every orphaned descendant of a program is reparented to it;
* as root: new network namespace (no interfaces up, so no network at all) and a private mount
  namespace with fresh tmpfs on /tmp, /var/tmp and /dev/shm (a program's scratch files never reach
  the host and are wiped after each run); it claims a dedicated unprivileged uid (a lock file makes
  it unique on the machine) that its programs run as, and makes the Python installation reachable
  for that uid by bind-mounting only the needed directories over a 0755 tmpfs where an ancestor
  (e.g. /root) is closed; the directories in ``hide`` (the caller's working directory and home by
  default) are covered the same way; a memory and a pids cgroup (v1) below its own bound the totals
  of each run, whatever its number of processes;
* not root: a user namespace with the same network and mount isolation when the kernel allows it,
  no uid change and no capabilities left in the child (every gap is listed in the capabilities'
  ``warnings``).

Per run (`Worker.run`): a fresh 0700 work directory owned by the run uid; fork a child which
calls setsid, joins the worker's cgroups, closes every inherited descriptor, scrubs the environment, sets rlimits (CPU, AS,
NPROC, FSIZE, NOFILE, CORE=0), drops to the run uid (setgroups/setresgid/setresuid, no new
privileges, parent-death signal) and then runs `_harness` (fork-server mode) or execs a fresh
interpreter on it (spawn mode). Its stderr and result channel are unlinked files capped by
RLIMIT_FSIZE. The worker enforces the wall-clock limit, then kills the process group and every
process of the run uid (a helper with that uid calls ``kill(-1, SIGKILL)``, which catches
double-forked ``setsid`` daemons) until it has no child left, reaps them, and wipes the scratch
space.
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
import secrets
import select
import shutil
import signal
import stat
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import _harness  # noqa: E402  (pre-imported: fork-server children use it directly)

# What most test programs import, loaded once. Kept lean on purpose: a fork copies the worker's page
# tables, so heavy modules (unittest.mock pulls in asyncio: 2-3x the fork cost) are left to the child.
PREIMPORTS = (
    "abc bisect collections collections.abc copy dataclasses functools heapq itertools json math operator "
    "random re string typing unittest"
).split()

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
SYSTEM_DIRS = {
    "/bin",
    "/boot",
    "/dev",
    "/etc",
    "/lib",
    "/lib32",
    "/lib64",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
    "/tmp",
    "/usr",
    "/var",
}
RESULT_CAP = 4 << 20
SETUP_FAILED = 121  # a child exit status meaning "our isolation setup failed", never the program's

_libc = ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


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


def _drop_capabilities() -> None:
    """capset(2) with empty sets: no capabilities left (those a user namespace grants included)."""
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (ctypes.c_uint32 * 6)()  # effective, permitted, inheritable x 2 words, all zero
    _check(_libc.capset(header, data), "capset")


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


def _write_frame(fd: int, obj: dict) -> None:
    body = json.dumps(obj).encode()
    data = struct.pack(">I", len(body)) + body
    while data:
        data = data[os.write(fd, data) :]


def _world_traversable(path: str) -> bool:
    try:
        return bool(os.stat(path).st_mode & stat.S_IXOTH)
    except OSError:
        return False


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
            "private_tmp": False,
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
        self.scratch = "/tmp"
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
        if not self.caps["netns"]:
            self.warnings.append("no network namespace: programs can reach the network")
        if not self.caps["private_tmp"]:
            self.warnings.append("no private /tmp: programs share the host's scratch directories")
        if not self.caps["uid_drop"]:
            self.caps["rlimits"].remove("NPROC")
            self.warnings.append(
                "no dedicated uid: programs run as the worker's own user (no RLIMIT_NPROC, since it would count "
                "all of that user's processes; files that user can write are writable by programs)"
            )

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
            self._private_scratch()
        uid = self._claim_uid()
        if uid is None:
            return
        if self.caps["mountns"]:
            try:
                self._expose_runtime(uid)
            except OSError as exc:
                self.warnings.append(f"could not expose the Python installation to uid {uid}: {exc}")
        if self._runtime_reachable():
            self.caps["uid_drop"] = True
            self.caps["run_uid"] = uid
            self.caps["cleanup"] = "process_group+uid"
            self._kill_uid(uid)  # leftovers of a previous holder of this uid (reparented to init)
            self._setup_cgroups(uid)
        else:
            self.warnings.append("the Python installation is not reachable by an unprivileged uid")

    def _setup_unprivileged(self) -> None:
        """Not root: a user namespace for the network and mount namespaces; programs keep the
        worker's uid and lose the capabilities the namespace gave it (`_drop_capabilities`)."""
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
        except OSError as exc:
            self.notes.append(f"user namespace id maps failed: {exc}")
        self._private_scratch()

    def _private_scratch(self) -> None:
        try:
            _mount("none", "/", None, MS_REC | MS_PRIVATE)
            size = int(self.config.get("tmp_mb", 256))
            for path in SCRATCH_DIRS:
                if os.path.isdir(path):
                    _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size}m,mode=1777")
            self.caps["private_tmp"] = True
        except OSError as exc:
            self.notes.append(f"no private /tmp: {exc}")

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
            if "pids" in self.cgroups:
                self._cgroup_write("pids", "pids.max", str(int(limits["max_procs"])))
        except OSError as exc:
            note = f"cgroup limits not applied: {exc}"
            if note not in self.warnings:
                self.warnings.append(note)

    def _memory_peak_mb(self) -> float | None:
        if "memory" not in self.cgroups:
            return None
        with open(os.path.join(self.cgroups["memory"], "memory.max_usage_in_bytes")) as f:
            return int(f.read()) / (1 << 20)

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
            fd = os.open(os.path.join(lock_dir, f"uid-{uid}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self.uid_lock = fd
            return uid
        self.notes.append(f"no free uid in {base}..{base + count - 1}")
        return None

    def _hidden(self) -> set[str]:
        """Directories to cover in the worker's mount namespace (the caller's working directory and
        home by default): data, hidden tests and secrets there stay out of programs' reach."""
        hidden = set()
        for path in self.config.get("hide", []):
            real = os.path.realpath(path)
            top = "/" + real.strip("/").split("/")[0]
            if real != "/" and top not in SYSTEM_DIRS and os.path.isdir(real):
                hidden.add(real)
        return hidden

    def _runtime_paths(self) -> list[str]:
        paths = {os.path.realpath(sys.executable), HERE, sys.base_prefix, sys.prefix}
        paths.update(os.path.realpath(p) for p in sys.path if p and os.path.exists(p))
        hidden = self._hidden()
        return sorted(p for p in paths if p not in hidden)

    def _runtime_reachable(self) -> bool:
        for path in self._runtime_paths():
            parts = path.split("/")
            for depth in range(2, len(parts) + 1):
                ancestor = "/".join(parts[:depth])
                if os.path.isdir(ancestor) and not _world_traversable(ancestor):
                    return False
        return True

    def _expose_runtime(self, uid: int) -> None:
        """Inside our private mount namespace: cover each closed directory on the way to the Python
        installation, and each hidden one, with a 0755 tmpfs holding bind mounts of only the needed
        entries (none for a hidden directory the runtime does not go through)."""
        hidden = self._hidden()
        covered: set[str] = set()
        for _ in range(16):
            blocked: dict[str, set[str]] = {}
            for path in self._runtime_paths():
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
                return
            for ancestor, names in sorted(blocked.items()):
                if any(ancestor.startswith(c + "/") for c in blocked if c != ancestor):
                    continue  # below another directory covered in this pass: next pass
                self._cover(ancestor, names)
                covered.add(ancestor)
                why = "hidden" if ancestor in hidden else "closed to others"
                self.notes.append(f"{ancestor} is {why}: programs see only {sorted(names)} there")
        raise OSError(errno.ELOOP, "could not expose the Python installation")

    @staticmethod
    def _cover(directory: str, names: set[str]) -> None:
        fds = {n: os.open(os.path.join(directory, n), os.O_PATH) for n in names}
        try:
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "size=64k,mode=755")
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

    # ---- one run ------------------------------------------------------------------------------
    def run(self, req: dict, job_bytes: bytearray) -> dict:
        """One run. ``req`` holds only the mode, limits and number of tests; ``job_bytes`` (the
        program, tests and entry point as JSON) goes to the child through an unlinked file and is
        zeroed here, never parsed: no earlier run's program or tests linger in this process's
        memory for a later fork-server child to find."""
        limits = req["limits"]
        uid = self.caps["run_uid"]
        workdir = os.path.join(self.scratch, f"restrl-run-{secrets.token_hex(6)}")
        os.mkdir(workdir, 0o700)
        if self.caps["uid_drop"]:
            os.chown(workdir, uid, uid)
        nonce = secrets.token_hex(16)
        facts = {"nonce": nonce, "n_tests": int(req["n_tests"])}
        job_fd = os.open(self.scratch, os.O_TMPFILE | os.O_RDWR, 0o600)
        with memoryview(job_bytes) as view:
            written = 0
            while written < len(view):
                written += os.write(job_fd, view[written:])
        job_bytes[:] = bytes(len(job_bytes))
        res_fd = os.open(self.scratch, os.O_TMPFILE | os.O_RDWR, 0o600)
        err_fd = os.open(self.scratch, os.O_TMPFILE | os.O_RDWR, 0o600)
        self._cgroup_limits(limits)
        started = time.monotonic()
        gc.freeze()  # the child's garbage collector then never touches (and copies) the worker's pages
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in (job_fd, res_fd, err_fd):
                os.close(fd)
            shutil.rmtree(workdir, ignore_errors=True)
            return {"status": "infra_error", "detail": f"fork failed: {exc}", "outcomes": [], "stderr": ""}
        if pid == 0:
            self._child(nonce, job_fd, req.get("mode", "forkserver"), limits, workdir, res_fd, err_fd)
        os.close(job_fd)
        try:
            return self._supervise(pid, facts, limits, started, res_fd, err_fd)
        finally:
            self._cleanup(pid, workdir)
            os.close(res_fd)
            os.close(err_fd)

    def _child(
        self, nonce: str, job_fd: int, mode: str, limits: dict, workdir: str, res_w: int, err_w: int
    ) -> None:
        """In the forked child: isolate, then run the harness on the job in ``job_fd``. Never returns."""
        try:
            os.setsid()
            for path in self.cgroups.values():
                with open(os.path.join(path, "cgroup.procs"), "w") as f:
                    f.write(str(os.getpid()))
            null = os.open(os.devnull, os.O_RDWR)
            os.dup2(null, 0)
            os.dup2(null, 1)
            os.dup2(err_w, 2)
            os.dup2(res_w, _harness.RESULT_FD)
            os.dup2(job_fd, _harness.JOB_FD)
            os.closerange(_harness.JOB_FD + 1, resource.getrlimit(resource.RLIMIT_NOFILE)[0])
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
            _prctl(PR_SET_NO_NEW_PRIVS, 1)
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
            # the signal dispositions of a fresh interpreter
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        except BaseException as exc:  # our machinery failed: say so on stderr, exit with our code
            try:
                os.write(2, f"sandbox setup failed: {exc!r}\n".encode())
            finally:
                os._exit(SETUP_FAILED)
        sys_path = [p for p in sys.path if p != HERE]
        try:
            if mode == "spawn":
                harness = os.path.join(HERE, "_harness.py")
                argv = [sys.executable, "-I", "-S", harness, nonce, json.dumps(sys_path)]
                os.execve(sys.executable, argv, os.environ)
            sys.path[:] = sys_path
            sys.argv = ["<program>"]
            _harness.main(_harness.read_job(), nonce)
            _harness._flush_std()
        except BaseException:
            os._exit(SETUP_FAILED if mode == "spawn" else 1)
        os._exit(0)

    def _supervise(
        self, pid: int, facts: dict, limits: dict, started: float, res_fd: int, err_fd: int
    ) -> dict:
        """Wait for the child's exit or the wall-clock deadline (one wake-up: its stderr and result
        channel are unlinked files, capped by RLIMIT_FSIZE, so it can never block on a full pipe)."""
        deadline = started + float(limits["wall_s"])
        wall_killed = False
        try:
            pidfd: int | None = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                wall_killed = True
                break
            if pidfd is not None:
                if select.select([pidfd], [], [], remaining)[0]:
                    break
            elif os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                break
            else:
                time.sleep(min(remaining, 0.002))
        if pidfd is not None:
            os.close(pidfd)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        _, wait_status, usage = os.wait4(pid, 0)
        wall = time.monotonic() - started
        self._sweep()
        stderr = os.pread(err_fd, int(limits["max_stderr_bytes"]), 0) if limits["max_stderr_bytes"] else b""
        results = os.pread(res_fd, max(RESULT_CAP, (int(limits["max_file_mb"]) + 1) << 20), 0)
        cpu = usage.ru_utime + usage.ru_stime
        verdict = self._verdict(facts, results, stderr, wait_status, wall_killed, wall, cpu, limits)
        verdict["memory_peak_mb"] = self._memory_peak_mb()
        return verdict

    def _verdict(
        self,
        facts: dict,
        raw: bytes,
        stderr: bytes,
        wait_status: int,
        wall_killed: bool,
        wall: float,
        cpu: float,
        limits: dict,
    ) -> dict:
        nonce = facts["nonce"]
        events = []
        for line in bytes(raw).split(b"\n"):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.pop("n", None) == nonce:
                index = event.get("i")
                if event.get("t") in ("value", "output") and isinstance(index, int):
                    # judged by the caller (`sandbox.pool`), which alone holds the expected values;
                    # tentatively "passed" here, so the run's status is right unless a judgement fails
                    event = {
                        "t": "outcome",
                        "i": index,
                        "name": event.get("name"),
                        "status": "passed",
                        "judge": event,
                    }
                events.append(event)
        kinds = {e.get("t") for e in events}
        load_error = next((e.get("msg", "") for e in events if e.get("t") == "load_error"), None)
        by_test: dict[int, list[dict]] = {}
        for event in events:
            if event.get("t") == "outcome" and isinstance(event.get("i"), int):
                by_test.setdefault(event["i"], []).append(event)
        signalled = os.WIFSIGNALED(wait_status)
        sig = os.WTERMSIG(wait_status) if signalled else None
        exit_code = os.WEXITSTATUS(wait_status) if os.WIFEXITED(wait_status) else None
        cpu_killed = sig == signal.SIGXCPU or (
            sig == signal.SIGKILL and cpu >= math.ceil(limits["cpu_s"]) - 0.05
        )
        timed_out = wall_killed or cpu_killed
        if wall_killed:
            ended = f"killed at the wall-clock limit ({limits['wall_s']} s)"
        elif cpu_killed:
            ended = f"killed at the CPU-time limit ({limits['cpu_s']} s)"
        elif signalled:
            ended = f"the program process died of {signal.Signals(sig or 0).name if sig else 'a signal'}"
        else:
            ended = f"the program process exited with status {exit_code}"
        stderr_text = stderr.decode("utf-8", errors="replace")
        if exit_code == SETUP_FAILED and "loaded" not in kinds and load_error is None:
            return {
                "status": "infra_error",
                "detail": f"sandbox setup failed: {stderr_text[-500:]}",
                "outcomes": [],
                "stderr": stderr_text,
            }
        outcomes: list[dict] = []
        for index in range(facts["n_tests"]):
            reported = by_test.get(index)
            if reported:
                outcomes.extend(
                    {
                        "index": index,
                        "name": e.get("name"),
                        "status": e.get("status", "failed"),
                        "message": str(e.get("msg", "")),
                        **({"judge": e["judge"]} if "judge" in e else {}),
                    }
                    for e in reported
                )
            elif load_error is not None:
                outcomes.append({"index": index, "name": None, "status": "error", "message": load_error})
            else:
                outcomes.append(
                    {
                        "index": index,
                        "name": None,
                        "status": "timeout" if timed_out else "error",
                        "message": f"no result: {ended}",
                    }
                )
        done = "done" in kinds
        if timed_out or any(o["status"] == "timeout" for o in outcomes):
            status, detail = "timeout", ended if timed_out else "a test hit the time limit"
        elif load_error is not None:
            status, detail = "error", f"the program failed to load: {load_error}"
        elif "loaded" not in kinds:
            status, detail = "error", f"the program did not load: {ended}"
        elif done and outcomes and all(o["status"] == "passed" for o in outcomes):
            status, detail = "passed", ""
        elif done and not facts["n_tests"]:
            status, detail = "passed", "the program ran to completion"
        else:
            status, detail = "failed", "" if done else f"the tests did not finish: {ended}"
        return {
            "status": status,
            "detail": detail,
            "outcomes": outcomes,
            "stderr": stderr_text,
            "wall_s": wall,
            "cpu_s": cpu,
        }

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
        """After a run: kill and reap everything it left behind (detached daemons included)."""
        for attempt in range(1000):
            if not self._leftovers():
                return
            if self.caps["uid_drop"]:
                self._kill_uid(self.caps["run_uid"])
            else:
                self._kill_children()
            if attempt:
                time.sleep(0.001)
        self.warnings.append("processes of a run survived cleanup")

    def _cleanup(self, pid: int, workdir: str) -> None:
        shutil.rmtree(workdir, ignore_errors=True)
        if self.caps["private_tmp"]:
            for base in SCRATCH_DIRS:
                try:
                    entries = os.listdir(base)
                except OSError:
                    continue
                for name in entries:
                    path = os.path.join(base, name)
                    if os.path.isdir(path) and not os.path.islink(path):
                        shutil.rmtree(path, ignore_errors=True)
                    else:
                        try:
                            os.unlink(path)
                        except OSError:
                            pass


def main() -> None:
    config = json.loads(sys.argv[1])
    proto_in = os.dup(0)
    proto_out = os.dup(1)
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
    """``{"op": "batch", "runs": [{mode, limits, n_tests, job_len}, ...]}`` followed by the runs'
    job JSON bytes back to back -> ``{"results": [verdict, ...]}``."""
    while True:
        req = _read_frame(proto_in)
        if req is None or req.get("op") == "exit":
            return
        if req.get("op") == "capabilities":
            _write_frame(proto_out, worker.caps)
            continue
        results = []
        for run in req["runs"]:
            job_bytes = _read_raw(proto_in, int(run["job_len"]))
            if job_bytes is None:
                return
            try:
                results.append(worker.run(run, job_bytes))
            except BaseException as exc:  # report, keep serving
                results.append(
                    {
                        "status": "infra_error",
                        "detail": f"worker error: {exc!r}",
                        "outcomes": [],
                        "stderr": "",
                    }
                )
            finally:
                job_bytes[:] = bytes(len(job_bytes))
        _write_frame(proto_out, {"results": results})


if __name__ == "__main__":
    main()
