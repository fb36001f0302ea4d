"""kernels.cpu_build: builds keyed by what makes them specific, flag fallback, killed builds."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mambaseq.kernels import cpu_build

TINY = ('#include <pybind11/pybind11.h>\n'
        'PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("answer", [] { return 42; }); }\n')


def test_the_build_key_changes_with_source_flags_compiler_and_cpu_only():
    base = cpu_build.build_key("src", ["-O3"], "g++ 12", "flags: avx2")
    assert cpu_build.build_key("src", ["-O3"], "g++ 12", "flags: avx2") == base
    assert cpu_build.build_key("src2", ["-O3"], "g++ 12", "flags: avx2") != base
    assert cpu_build.build_key("src", ["-O2"], "g++ 12", "flags: avx2") != base
    assert cpu_build.build_key("src", ["-O3"], "g++ 13", "flags: avx2") != base
    assert cpu_build.build_key("src", ["-O3"], "g++ 12", "flags: avx2 avx512f") != base


def test_two_checkouts_with_one_source_share_one_build(tmp_path, monkeypatch):
    """The key depends on the source's text, not its path: checkouts never rebuild in turn."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "k.cpp").write_text(TINY)
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    built = _fake_build(monkeypatch)
    first = cpu_build.load_extension("tiny", tmp_path / "a" / "k.cpp", "building")
    assert cpu_build.load_extension("tiny", tmp_path / "b" / "k.cpp", "building") == first
    (tmp_path / "b" / "k.cpp").write_text(TINY + "// edited\n")
    assert cpu_build.load_extension("tiny", tmp_path / "b" / "k.cpp", "building") != first
    assert len(built) == 2  # the first source once, the edited one once


def _fake_build(monkeypatch):
    """Builds that write an empty ``.so`` (no compiler runs) and imports that return the
    module's name; returns the list of the names built."""
    built = []

    def build(name, src, flags, target):
        target.mkdir(mode=0o755)
        (target / f"{name}.so").write_text("")
        built.append(name)

    monkeypatch.setattr(cpu_build, "_build", build)
    monkeypatch.setattr(cpu_build, "_import_built", lambda name, path: name)
    return built


def _fake_compiler(tmp_path, reject=None, hang_on=None):
    """A C++ compiler wrapper that refuses one flag or hangs on one source, else runs c++."""
    script = tmp_path / "fakecxx"
    lines = ["#!/bin/bash", 'for a in "$@"; do']
    if reject:
        lines.append(f'  [ "$a" = "{reject}" ] && exit 1')
    if hang_on:
        lines.append(f'  case "$a" in *{hang_on}) echo $$ > {tmp_path}/hung.pid; exec sleep 300;; esac')
    lines += ["done", 'exec c++ "$@"']
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return str(script)


def test_a_flag_the_compiler_refuses_is_dropped(tmp_path):
    cxx = _fake_compiler(tmp_path, reject="-march=native")
    flags = cpu_build.supported_flags(cxx)
    assert "-march=native" not in flags and "-O3" in flags


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the build child dies with "
                    "its parent through Linux's PR_SET_PDEATHSIG")
def test_a_killed_build_leaves_no_compiler_and_the_next_build_succeeds(tmp_path):
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY)
    env = {**os.environ, "MAMBASEQ_CACHE_DIR": str(tmp_path / "cache"),
           "CXX": _fake_compiler(tmp_path, hang_on="tiny.cpp")}
    code = ("from pathlib import Path\nfrom mambaseq.kernels.cpu_build import load_extension\n"
            f"print(load_extension('tiny', Path({str(source)!r}), 'building tiny').answer())\n")
    parent = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    pid_file = tmp_path / "hung.pid"
    deadline = time.time() + 120
    while not pid_file.exists() and parent.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert pid_file.exists(), parent.communicate()
    time.sleep(0.5)  # the wrapper has exec'ed the hanging "compiler"
    compiler_pid = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 20
    while _running(compiler_pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _running(compiler_pid), "the compiler outlived the killed build"

    env["CXX"] = "c++"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "42"
    assert "building tiny" in out.stderr  # the first-use compile is announced
    leftovers = [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def _running(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/cpuinfo")
def test_the_cpu_signature_names_the_cpu_features():
    assert "flags" in cpu_build.cpu_signature() or "Features" in cpu_build.cpu_signature()


def test_an_edited_local_header_changes_the_build_key(tmp_path):
    (tmp_path / "k.cpp").write_text('#include "shared.h"\n' + TINY)
    (tmp_path / "shared.h").write_text("inline int one() { return 1; }\n")
    before = cpu_build.source_with_headers(tmp_path / "k.cpp")
    (tmp_path / "shared.h").write_text("inline int one() { return 2; }\n")
    after = cpu_build.source_with_headers(tmp_path / "k.cpp")
    assert before != after and "return 2" in after
    assert cpu_build.build_key(before, [], "", "") != cpu_build.build_key(after, [], "", "")


# -- what the build needs, and a cache nobody else can write to ----------------------------

def _no_build(*_):
    raise AssertionError("nothing may be compiled here")


def test_no_compiler_is_one_line_naming_it_before_anything_is_built(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))          # no g++, c++ nor clang++
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_build, "_build", _no_build)
    with pytest.raises(RuntimeError) as err:
        cpu_build.load_kernel("selective_scan_cpu.cpp", "mambaseq_scan_cpu",
                              "C++ CPU scan kernel", user="selective_scan")
    message = str(err.value)
    assert "no C++ compiler: 'c++'" in message and "install g++ or clang++" in message
    assert "\n" not in message and "ninja" not in message


def test_no_ninja_is_one_line_naming_it(tmp_path, monkeypatch):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "c++").symlink_to(shutil.which("c++") or "/bin/true")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))  # no ninja beside
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(cpu_build, "_build", _no_build)
    with pytest.raises(RuntimeError, match="'ninja' build tool was not found") as err:
        cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    assert "\n" not in str(err.value) and "pip install ninja" in str(err.value)


def _tiny_source(tmp_path):
    source = tmp_path / "tiny.cpp"
    source.write_text(TINY)
    return source


def test_the_command_line_says_in_one_line_that_no_compiler_is_there(tmp_path):
    """A real run with a progress bar: one error line, on its own line, no traceback."""
    (tmp_path / "bin").mkdir()
    rng = random.Random(0)
    (tmp_path / "g.fa").write_text(">g\n" + "".join(rng.choice("ACGT") for _ in range(6000))
                                   + "\n")
    env = {**os.environ, "PATH": str(tmp_path / "bin"), "OMP_NUM_THREADS": "1",
           "MAMBASEQ_CACHE_DIR": str(tmp_path / "cache")}       # fresh: nothing cached
    env.pop("CXX", None)
    out = subprocess.run(
        [sys.executable, "-m", "mambaseq.pipelines", "pretrain-genome", "--fasta",
         str(tmp_path / "g.fa"), "--out", str(tmp_path / "lm"), "--steps", "2", "--seq-len",
         "64", "--batch-size", "2", "--d-model", "16", "--n-layer", "1", "--device", "cpu",
         "--val-bases", "1000"], env=env, capture_output=True, text=True, cwd=tmp_path,
        timeout=300)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.split("\n") if "error:" in line]
    assert errors == [out.stderr.rstrip("\n").split("\n")[-1]], out.stderr  # one, and last
    assert errors[0].startswith("mambaseq pretrain-genome: error: ")     # no bar before it
    assert "no C++ compiler: 'c++'" in errors[0]


def test_an_unwritable_cache_builds_in_a_private_temporary_folder(tmp_path, monkeypatch,
                                                                  capsys):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("HOME", str(tmp_path / "file" / "home"))   # nothing can be made there
    monkeypatch.delenv("MAMBASEQ_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(cpu_build, "_private_cache", None, raising=False)
    built = _fake_build(monkeypatch)
    monkeypatch.setattr(cpu_build, "_import_built", lambda name, path: path)
    so = cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building tiny")
    private = so.parent.parent
    assert private.name.startswith("mambaseq-kernels-") and so.is_file()
    assert private.stat().st_mode & 0o777 == 0o700
    note = capsys.readouterr().err
    assert f"cannot write the kernel cache {tmp_path / 'file' / 'home'}" in note
    assert "MAMBASEQ_CACHE_DIR" in note and "compiler" not in note.split("building tiny")[0]
    assert cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building tiny") == so
    assert len(built) == 1                       # the same private folder for the process


@pytest.mark.parametrize("where,mode", [("cache", 0o777), ("above", 0o777), ("above", 0o770),
                                       ("cache", 0o775)])
def test_a_cache_folder_others_can_write_to_is_refused(tmp_path, monkeypatch, where, mode):
    """The cache folder or a folder above it: others could plant a module there (0o770 and
    0o775: group-writable by a group that has another member)."""
    cache = tmp_path / "shared" / "cache"
    cache.mkdir(parents=True)
    refused = cache if where == "cache" else cache.parent
    refused.chmod(mode)
    if mode & 0o020:
        os.chown(refused, os.getuid(), _group_with_another_member())
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(cache))
    built = _fake_build(monkeypatch)
    with pytest.raises(RuntimeError) as err:
        cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    message = str(err.value)
    assert f"{refused} can be written by other users" in message
    assert "MAMBASEQ_CACHE_DIR" in message and "\n" not in message
    assert built == []


def test_a_sticky_world_writable_folder_above_the_cache_is_fine(tmp_path, monkeypatch):
    """As /tmp: others may add names beside the cache, never rename or replace it."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "tmp").chmod(0o1777)
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "tmp" / "cache"))
    built = _fake_build(monkeypatch)
    cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    assert len(built) == 1 and (tmp_path / "tmp" / "cache").stat().st_mode & 0o022 == 0


def _group_with_another_member():
    """A group that has a member who is not the current user; skips when there is none."""
    import grp
    import pwd

    me = pwd.getpwuid(os.getuid()).pw_name
    for group in grp.getgrall():
        others = set(group.gr_mem) | {u.pw_name for u in pwd.getpwall()
                                      if u.pw_gid == group.gr_gid}
        if others - {me}:
            if os.getuid() == 0 or group.gr_gid in os.getgroups():
                return group.gr_gid
    pytest.skip("no group with another member that this user may give a folder to")


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_build_another_user_owns_is_refused_and_never_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    _fake_build(monkeypatch)
    loaded = []
    monkeypatch.setattr(cpu_build, "_import_built", lambda name, path: loaded.append(path))
    cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    (so,) = loaded
    os.chown(so, 65534, 65534)                         # nobody's module in your cache
    with pytest.raises(RuntimeError, match=f"{so} belongs to .*; delete {so.parent}"):
        cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    os.chown(so, 0, 0)
    so.chmod(0o666)                                    # yours, but anyone may rewrite it
    with pytest.raises(RuntimeError, match=f"{so} can be written by other users"):
        cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    os.chown(tmp_path / "cache", 65534, 65534)         # the cache folder is somebody else's
    with pytest.raises(RuntimeError, match=f"{tmp_path / 'cache'} belongs to .*"
                                           "MAMBASEQ_CACHE_DIR"):
        cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    assert len(loaded) == 1


def test_a_folder_writable_by_your_own_private_group_is_fine(tmp_path, monkeypatch):
    """A umask of 002 makes group-writable folders; with a group of one user, nobody else
    can write them."""
    if not cpu_build._group_is_yours(os.getgid()):
        pytest.skip("this user's group has other members")
    (tmp_path / "cache").mkdir(mode=0o775)
    (tmp_path / "cache").chmod(0o775)
    os.chown(tmp_path / "cache", os.getuid(), os.getgid())
    monkeypatch.setenv("MAMBASEQ_CACHE_DIR", str(tmp_path / "cache"))
    built = _fake_build(monkeypatch)
    cpu_build.load_extension("tiny", _tiny_source(tmp_path), "building")
    assert len(built) == 1
