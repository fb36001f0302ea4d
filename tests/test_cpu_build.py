"""kernels.cpu_build: builds keyed by what makes them specific, flag fallback, killed builds."""
import os
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
    built = []
    monkeypatch.setattr(cpu_build, "_build", lambda name, src, flags, target: built.append(name))
    monkeypatch.setattr(cpu_build, "_import_built", lambda name, path: name)
    first = cpu_build.load_extension("tiny", tmp_path / "a" / "k.cpp", "building")
    (tmp_path / "cache" / first).mkdir(parents=True)
    (tmp_path / "cache" / first / f"{first}.so").write_text("")
    assert cpu_build.load_extension("tiny", tmp_path / "b" / "k.cpp", "building") == first
    (tmp_path / "b" / "k.cpp").write_text(TINY + "// edited\n")
    assert cpu_build.load_extension("tiny", tmp_path / "b" / "k.cpp", "building") != first
    assert len(built) == 2  # the first source once, the edited one once


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
