"""The llama.cpp build picks kernels from what the CPU reports and never hands a CPU code it lacks."""

from __future__ import annotations

import json

import pytest

from core.measure.cpu import parse_cpuinfo
from core.runtimes import llamacpp, llamacpp_build

AVX2_ONLY = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2"
AVX512 = AVX2_ONLY + " avx512f avx512cd avx512vl avx512dq avx512bw avx512vbmi avx512_vnni avx512_bf16"


def cpu(flags: str, arch: str = "x86_64", name: str = "AMD EPYC"):
    return parse_cpuinfo(f"processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n"
                         f"model name\t: {name}\nstepping\t: 1\nflags\t\t: {flags}\n\n", arch)


def test_an_avx2_cpu_gets_avx2_kernels_and_no_avx512():
    choice = llamacpp_build.choose_kernels(cpu(AVX2_ONLY))
    assert "-DGGML_AVX2=ON" in choice.cmake_args and "-DGGML_AVX512=OFF" in choice.cmake_args
    assert "-DGGML_NATIVE=ON" not in choice.cmake_args and choice.missing_on(cpu(AVX2_ONLY)) == []


def test_an_avx512_amx_xeon_gets_avx512_but_never_amx():
    xeon = cpu(AVX512 + " amx_tile amx_int8 amx_bf16 avx_vnni", name="Intel(R) Xeon(R) Platinum 8480+")
    choice = llamacpp_build.choose_kernels(xeon)
    assert {"-DGGML_AVX512=ON", "-DGGML_AVX512_VNNI=ON", "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON"} <= set(
        choice.cmake_args)
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(choice.cmake_args)


def test_avx512_extras_need_the_avx512_base_set():
    partial = cpu(AVX2_ONLY + " avx512f avx512_vnni")  # no BW/DQ/VL: not the set ggml's AVX512 option compiles for
    choice = llamacpp_build.choose_kernels(partial)
    assert "-DGGML_AVX512=OFF" in choice.cmake_args and "-DGGML_AVX512_VNNI=OFF" in choice.cmake_args


def test_a_plain_x86_64_gets_no_avx_at_all():
    choice = llamacpp_build.choose_kernels(cpu("fpu sse sse2"))
    assert all(a.endswith("=OFF") for a in choice.cmake_args) and choice.requires == ()


def test_arm_gets_the_portable_build():
    arm = parse_cpuinfo("processor\t: 0\nFeatures\t: fp asimd asimddp sve\nCPU implementer\t: 0x41\n"
                        "CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n", "aarch64")
    choice = llamacpp_build.choose_kernels(arm)
    assert choice.cmake_args == [] and choice.key.startswith("aarch64-")
    assert choice.missing_on(cpu(AVX512)) == ["a aarch64 CPU (this one is x86_64)"]


def test_two_cpus_with_different_kernels_never_share_a_cache_folder():
    keys = {llamacpp_build.choose_kernels(cpu(f)).key for f in (AVX2_ONLY, AVX512, "fpu sse sse2")}
    assert len(keys) == 3


def test_a_binding_built_for_avx512_is_refused_on_an_avx2_cpu_before_it_loads(tmp_path, monkeypatch):
    built = llamacpp_build.choose_kernels(cpu(AVX512))
    (tmp_path / llamacpp_build.STAMP).write_text(json.dumps({
        "version": llamacpp_build.VERSION, "key": built.key, "cmake_args": built.cmake_args,
        "requires": list(built.requires), "cpu": "AMD EPYC", "built_at": "-", "compile_s": 1.0}))
    monkeypatch.setattr(llamacpp_build, "binding_lib_dir", lambda: tmp_path)
    monkeypatch.setattr(llamacpp_build, "this_cpu", lambda: cpu(AVX2_ONLY))
    reason = llamacpp.llama_cpp_problem()
    assert reason is not None and "avx512f" in reason and "make setup" in reason
    monkeypatch.setattr(llamacpp_build, "this_cpu", lambda: cpu(AVX512))
    assert llamacpp_build.why_not_binding() is None


def test_tools_not_built_for_this_cpu_say_how_to_build_them(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_LLAMA_CACHE", str(tmp_path))
    assert "make setup" in llamacpp_build.why_not_tools()
    with pytest.raises(FileNotFoundError, match="not built for this CPU"):
        llamacpp_build.tool("llama-server")
    with pytest.raises(ValueError, match="not one of the llama.cpp tools"):
        llamacpp_build.tool("llama-cli")


def test_a_failed_build_leaves_the_lab_installable_and_says_why(tmp_path, monkeypatch):
    import subprocess

    def broken(*_a):
        raise subprocess.CalledProcessError(2, ["cmake", "--build"])

    monkeypatch.setenv("LAB_LLAMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(llamacpp_build, "build", broken)
    said = llamacpp_build.ensure(tmp_path / "build.log")
    assert said.startswith("note: llama.cpp did not build here") and "GGUF" in said
    assert "failed to build on this CPU" in llamacpp_build.why_not_tools()
    assert "did not build on this CPU before" in llamacpp_build.ensure(tmp_path / "build.log")  # not retried each run
    assert llamacpp_build.main(["install", "--log", str(tmp_path / "build.log")]) == 0  # never fails the install
