"""Build and load the C++ CPU scan kernel, once per (source, flags, torch, CPU).

The build lives in ``$MAMBASEQ_CACHE_DIR`` (default ``~/.cache/mambaseq``) under a folder
named by a hash of everything that makes one build unusable by another process: the C++
source, the compiler flags, the torch and Python versions, the compiler, and the CPU
(model and feature flags, since ``-march=native`` code can crash with an illegal
instruction on another CPU type). Two checkouts or environments with the same key share
one build; different keys never load or overwrite each other's.

A built module is loaded and run, so a cache that someone else can write to would let
them run code as you: the cache folder, every folder above it, the build's folder and its
``.so`` must belong to you (or root) and must not be writable by other users (a folder
above may be, when it has the sticky bit, as ``/tmp`` has); anything else is refused in
one line that names the folder and the fix. When the cache folder cannot be created or
written (a read-only home), the build goes to a private temporary folder for this process
only, removed at exit, and a line says so and names ``MAMBASEQ_CACHE_DIR``. A missing
compiler or ``ninja`` is reported in one line before anything is compiled.

A build runs in a child process in its own process group, in a temporary folder that is
renamed into place when the module is complete. The child dies with its parent and takes
the compiler with it, so a killed run leaves neither a compiler running nor a half build,
and the next run builds cleanly. A cached build is loaded directly from its ``.so``,
without importing ``torch.utils.cpp_extension`` (whose import warns about CUDA on every
CPU-only machine).
"""
from __future__ import annotations

import atexit
import ctypes
import grp
import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# Tried in order; a flag the compiler rejects is dropped. -fno-trapping-math lets gcc
# if-convert the clamps of fast_exp, so its loops vectorise; -fopenmp makes ATen's
# parallel_for spread channel blocks over threads (without it the kernel runs on one).
PREFERRED_FLAGS = ("-O3", "-march=native", "-fno-trapping-math", "-fopenmp")


def cache_root() -> Path:
    """Where builds are kept: ``$MAMBASEQ_CACHE_DIR`` or ``~/.cache/mambaseq``."""
    root = os.environ.get("MAMBASEQ_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mambaseq"


_private_cache: Path | None = None  # this process's fallback cache, made on first need


def writable_cache(root: Path) -> Path:
    """``root``, created (missing folders 0o755) when it does not exist; when it cannot be
    created or written, a private temporary folder for this process (0o700, removed at
    exit), announced in one line that names ``root`` and ``MAMBASEQ_CACHE_DIR``."""
    global _private_cache
    try:
        for folder in [*reversed(root.parents), root]:
            if not folder.is_dir():
                folder.mkdir(mode=0o755, exist_ok=True)
        if os.access(root, os.W_OK | os.X_OK):
            return root
        reason = "not writable"
    except FileExistsError as err:
        reason = f"{err.filename} is not a folder"
    except OSError as err:
        reason = f"{err.filename}: {err.strerror}" if err.filename else str(err)
    if _private_cache is None:
        _private_cache = Path(tempfile.mkdtemp(prefix="mambaseq-kernels-"))
        atexit.register(shutil.rmtree, _private_cache, ignore_errors=True)
    _announce(f"mambaseq: cannot write the kernel cache {root} ({reason}); building in "
              f"{_private_cache} for this run only (set MAMBASEQ_CACHE_DIR to a writable "
              "folder of your own to keep the build)")
    return _private_cache


def _group_is_yours(gid: int) -> bool:
    """Whether group ``gid`` has no member but you (a user-private group, as a umask of
    002 makes group-writable folders in)."""
    try:
        me = pwd.getpwuid(os.getuid()).pw_name
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        return False
    members |= {user.pw_name for user in pwd.getpwall() if user.pw_gid == gid}
    return members <= {me}


def check_not_writable_by_others(path: Path, fix: str) -> None:
    """Refuse ``path`` when another user could change it: it must belong to you or root,
    and must not be writable by another user (world-writable, or group-writable by a group
    that has other members), unless it is a folder with the sticky bit (others may add
    names to it, never rename or replace yours).

    Raises:
        RuntimeError: naming ``path``, who can write it, and ``fix``.
    """
    info = path.stat()
    owner_ok = info.st_uid in (os.getuid(), 0)
    group_writes = info.st_mode & stat.S_IWGRP and not _group_is_yours(info.st_gid)
    others_write = (info.st_mode & stat.S_IWOTH or group_writes) and not (
        stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX)
    if owner_ok and not others_write:
        return
    try:
        owner = pwd.getpwuid(info.st_uid).pw_name
    except KeyError:
        owner = f"uid {info.st_uid}"
    who = (f"belongs to {owner}, not to you" if not owner_ok
           else f"can be written by other users (mode {stat.filemode(info.st_mode)})")
    raise RuntimeError(f"the kernel cache is unsafe: {path} {who}, and the kernels built "
                       f"there are loaded and run as you; {fix}")


def check_cache_folder(root: Path) -> None:
    """Refuse a cache folder that another user could put a module into: ``root`` (when it
    exists) and every folder above it, by ``check_not_writable_by_others``.

    Raises:
        RuntimeError: naming the folder and the fix (make it private, or set
            ``MAMBASEQ_CACHE_DIR`` to a folder of your own).
    """
    fix = ("make it yours and private (chown, chmod go-w) or set MAMBASEQ_CACHE_DIR to a "
           "folder of your own")
    path = Path(os.path.abspath(root))
    for folder in dict.fromkeys([*path.parents, *path.resolve().parents, path.resolve()]):
        if folder.exists():
            check_not_writable_by_others(folder, fix)


def _announce(line: str) -> None:
    """One line on stderr that leaves any progress bar intact (tqdm moves it below)."""
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)
    sys.stderr.flush()


def _ninja_dir() -> str | None:
    """The folder of ``ninja`` when it must be added to the build's PATH ('' when it is on
    the PATH already): the ``ninja`` package installs it beside this Python, which is not
    on the PATH of a virtual environment that was not activated. None when there is none."""
    if shutil.which("ninja"):
        return ""
    beside = Path(sys.executable).parent
    return str(beside) if shutil.which("ninja", path=str(beside)) else None


def check_build_tools(cxx: str) -> None:
    """Refuse in one line a build that cannot start: no C++ compiler, or no ``ninja``.

    Raises:
        RuntimeError: naming what is missing and how to get it.
    """
    program = (shlex.split(cxx) or [""])[0]
    if not shutil.which(program):
        where = "$CXX" if "CXX" in os.environ else "the PATH"
        raise RuntimeError(f"no C++ compiler: {program!r} ({where}) was not found; install "
                           "g++ or clang++ (C++17), or set CXX to one")
    if _ninja_dir() is None:
        raise RuntimeError("the 'ninja' build tool was not found on the PATH nor beside "
                           f"{sys.executable}; install it with: {sys.executable} -m pip "
                           "install ninja")


def compiler() -> str:
    """The C++ compiler torch's extension builder uses: ``$CXX`` or ``c++``."""
    return os.environ.get("CXX", "c++")


def cpu_signature() -> str:
    """Model name and feature flags of this CPU (Linux), else what ``platform`` knows."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    wanted = [line for line in info.splitlines()
              if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part")]
    # one CPU's lines are enough; every core of a machine reports the same features
    unique = list(dict.fromkeys(wanted))
    return "\n".join(unique) or f"{platform.machine()} {platform.processor()}"


def compiler_version(cxx: str) -> str:
    """First line of ``cxx --version``, or '' when the compiler cannot be run."""
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.splitlines()[0] if out.stdout else ""


def supported_flags(cxx: str, candidates=PREFERRED_FLAGS) -> list[str]:
    """The subset of ``candidates`` that ``cxx`` accepts (each tried on an empty program)."""
    kept = []
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.cpp"
        probe.write_text("int main() { return 0; }\n")
        for flag in candidates:
            try:
                ok = subprocess.run([cxx, flag, str(probe), "-o", str(Path(tmp) / "probe")],
                                    capture_output=True, timeout=60).returncode == 0
            except (OSError, subprocess.SubprocessError):
                ok = False
            if ok:
                kept.append(flag)
            else:
                log.info("C++ kernel build: %s does not accept %s; building without it", cxx, flag)
    return kept


def build_key(source: str, flags, cxx_version: str, cpu: str) -> str:
    """Hash of what makes a build specific: source, flags, compiler, torch, Python, CPU."""
    parts = [source, " ".join(flags), cxx_version, torch.__version__,
             f"{sys.version_info.major}.{sys.version_info.minor}", platform.machine(), cpu]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def source_with_headers(source_path: Path) -> str:
    """The text of ``source_path`` followed by that of every local header it includes
    (``#include "name.h"`` beside it), so that editing a shared header changes the build
    key of every source that includes it."""
    text = source_path.read_text()
    headers = re.findall(r'^\s*#include\s+"([^"]+)"', text, flags=re.M)
    return "\0".join([text] + [(source_path.parent / h).read_text() for h in headers])


def load_kernel(filename: str, module_name: str, what: str, user: str):
    """Import the extension built from ``kernels/csrc/<filename>`` (see ``load_extension``),
    announcing a first build in one line and logging once which kernel runs.

    Args:
        filename: the C++ file in kernels/csrc.  module_name: prefix of the built module.
        what: the kernel in words ("C++ CPU scan kernel").  user: who needs it, for messages.
    Raises:
        RuntimeError: the kernel cannot be built or loaded; says why: a missing tool, an
            unsafe cache folder, or the compiler's last lines.
    """
    source = Path(__file__).with_name("csrc") / filename
    try:
        module = load_extension(
            module_name, source,
            announce=f"mambaseq: compiling the {what} (once for this source, torch and CPU; "
                     "about a minute)")
    except (RuntimeError, OSError) as err:
        raise RuntimeError(f"{user}: cannot use the {what}: {err}") from err
    log.info("%s: using the %s", user, what)
    return module


def _import_built(name: str, so_path: Path):
    spec = importlib.util.spec_from_file_location(
        name, so_path, loader=importlib.machinery.ExtensionFileLoader(name, str(so_path)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _die_with_parent():
    """preexec_fn of the build child: SIGTERM when the parent dies (Linux), own group."""
    os.setpgrp()
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def load_extension(name: str, source_path: Path, announce: str):
    """Import the extension built from ``source_path``, building it first if needed.

    Args:
        name: module name prefix; the built module is ``{name}_{key}``.
        source_path: the C++ file.
        announce: one line printed to stderr before a (slow) first build; the cache folder
            is appended.
    Raises:
        RuntimeError: a cache folder others can write to (``check_cache_folder``), no
            compiler or ninja (``check_build_tools``), or the build failed (the compiler's
            last lines).
    """
    cxx = compiler()
    source = source_with_headers(source_path)
    cpu, version = cpu_signature(), compiler_version(cxx)
    root = cache_root()
    check_cache_folder(root)

    def cached(flags):
        module_name = f"{name}_{build_key(source, flags, version, cpu)}"
        return module_name, root / module_name / f"{module_name}.so"

    module_name, so_path = cached(list(PREFERRED_FLAGS))
    if not so_path.exists():  # probe the compiler only when the usual build is missing
        check_build_tools(cxx)
        flags = supported_flags(cxx)
        module_name, so_path = cached(flags)
        if not so_path.exists():
            root = writable_cache(root)
            check_cache_folder(root)  # as created: nobody else made it first
            so_path = root / module_name / so_path.name
            if not so_path.exists():
                _announce(f"{announce} into {root}")
                _build(module_name, source_path, flags, so_path.parent)
    fix = f"delete {so_path.parent} (it is rebuilt on next use) if you did not put it there"
    check_not_writable_by_others(so_path.parent, fix)
    check_not_writable_by_others(so_path, fix)
    return _import_built(module_name, so_path)


def _build(module_name: str, source_path: Path, flags, target: Path):
    """Compile into a temporary sibling of ``target`` (whose parent exists) in a child
    process, then rename."""
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{module_name}-", dir=target.parent))
    cmd = [sys.executable, "-m", "mambaseq.kernels.cpu_build", module_name, str(source_path),
           str(staging), *flags]
    env = dict(os.environ)
    if _ninja_dir():
        env["PATH"] = os.pathsep.join(filter(None, [_ninja_dir(), env.get("PATH")]))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              preexec_fn=_die_with_parent)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise RuntimeError(f"compiling {source_path} with {compiler()} failed:\n{tail}")
        staging.chmod(0o755)  # mkdtemp made it private; a shared cache is read by others
        so = staging / f"{module_name}.so"
        so.chmod(so.stat().st_mode & ~0o022)  # whatever the umask: nobody else writes it
        try:
            staging.rename(target)
        except OSError:
            if not (target / f"{module_name}.so").exists():  # not a concurrent build's win
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        for stale in target.parent.glob(f".tmp-{module_name}-*"):
            if not _pid_alive_for(stale):
                shutil.rmtree(stale, ignore_errors=True)


def _pid_alive_for(staging: Path) -> bool:
    """Whether the process that owns a staging folder (its ``pid`` file) still runs."""
    try:
        pid = int((staging / "pid").read_text())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def _stop_build(*_):
    """SIGTERM handler of the build child (its parent died): pass SIGTERM on to its process
    group, so ninja stops the compilers it runs in groups of their own, then exit."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.killpg(0, signal.SIGTERM)
    try:
        while os.wait():  # reap ninja once it has stopped its compilers
            pass
    except ChildProcessError:
        pass
    os._exit(1)


def _child_main(module_name: str, source: str, build_dir: str, *flags: str):
    """The build child: compiles with ``torch.utils.cpp_extension``; dies with its parent
    and takes the compiler with it (see ``_stop_build``)."""
    signal.signal(signal.SIGTERM, _stop_build)
    Path(build_dir, "pid").write_text(str(os.getpid()))
    from torch.utils.cpp_extension import load
    load(name=module_name, sources=[source], extra_cflags=list(flags),
         extra_ldflags=["-fopenmp"] if "-fopenmp" in flags else [],
         build_directory=build_dir, verbose=os.environ.get("MAMBASEQ_VERBOSE_BUILD") == "1")


if __name__ == "__main__":
    _child_main(*sys.argv[1:])
