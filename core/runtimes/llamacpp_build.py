"""One build of llama.cpp for this CPU: the Python binding's libraries and llama.cpp's own tools, from one compile.

PyPI ships llama-cpp-python only as source, with llama.cpp vendored inside it. The lab compiles that vendored tree
once with CMake (shared libraries plus `llama-server`, `llama-perplexity`, `llama-bench`, `llama-batched-bench`
and `llama-quantize`), installs the binding with its own compile turned off, and puts the libraries from the same
compile where the binding looks for them. Binding and tools therefore run the same kernels.

Kernels are chosen from the CPU's reported features at build time, and the cache is keyed by them, so a machine
with another CPU builds its own and never runs code its CPU lacks:
  - x86-64: SSE4.2, AVX, F16C, FMA, AVX2, BMI2, AVX-VNNI and AVX-512 (F/CD/VL/DQ/BW, then VBMI, VNNI, BF16), each
    only where /proc/cpuinfo lists it. AMX stays off: a build with AMX on (-march=native) crashed at the first
    token on an AVX-512/AMX Xeon VM, and on a 135M model the tiles would buy little.
  - ARM and others: llama.cpp's portable baseline (NEON on aarch64).
Run-time dispatch over every variant (GGML_BACKEND_DL with GGML_CPU_ALL_VARIANTS, as llama.cpp's releases do)
compiles the CPU backend about fourteen times: on a 2-core machine that is most of an hour, so the lab keys the
cache instead.

    python -m core.runtimes.llamacpp_build install   # build if this CPU's build is not cached, then install
    python -m core.runtimes.llamacpp_build status    # what is built and installed, in words

Standard library only (plus core.measure.cpu): this runs while the lab is being installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.measure.cpu import CpuFacts, this_cpu

PACKAGE = "llama-cpp-python"
VERSION = "0.3.36"
TOOLS = ("llama-server", "llama-perplexity", "llama-bench", "llama-batched-bench", "llama-quantize")
STAMP = "lab-build.json"  # written beside the libraries the binding loads, and in the cache folder

# (cpuinfo flags that must all be present, CMake option) in the order ggml's own CPU variants stack them
_X86_OPTIONS = (
    (("sse4_2",), "GGML_SSE42"), (("avx",), "GGML_AVX"), (("f16c",), "GGML_F16C"), (("fma",), "GGML_FMA"),
    (("avx2",), "GGML_AVX2"), (("bmi2",), "GGML_BMI2"), (("avx_vnni",), "GGML_AVX_VNNI"),
    (("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"), "GGML_AVX512"),
    (("avx512vbmi",), "GGML_AVX512_VBMI"), (("avx512_vnni",), "GGML_AVX512_VNNI"),
    (("avx512_bf16",), "GGML_AVX512_BF16"),
)
_AVX512_EXTRAS = {"GGML_AVX512_VBMI", "GGML_AVX512_VNNI", "GGML_AVX512_BF16"}
_ALWAYS_OFF = ("GGML_AMX_TILE", "GGML_AMX_INT8", "GGML_AMX_BF16")
_COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=ON", "-DGGML_NATIVE=OFF",
           "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_TOOLS=ON",
           "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_CURL=OFF",
           # tools find the libraries beside them wherever the folder is copied
           "-DCMAKE_BUILD_RPATH_USE_ORIGIN=ON"]


@dataclass(frozen=True)
class KernelChoice:
    """The CPU kernels one build compiles: CMake options and the cpuinfo flags a CPU needs to run them."""
    arch: str
    enabled: tuple[str, ...]  # GGML_* options turned on
    disabled: tuple[str, ...]  # GGML_* options turned off
    requires: tuple[str, ...]  # cpuinfo flags the build's code uses

    @property
    def cmake_args(self) -> list[str]:
        return [f"-D{o}=ON" for o in self.enabled] + [f"-D{o}=OFF" for o in self.disabled]

    @property
    def key(self) -> str:
        """'x86_64-avx2-avx512-…-1a2b3c': readable, and unique per set of options."""
        names = [o.removeprefix("GGML_").lower() for o in self.enabled if o not in ("GGML_SSE42", "GGML_AVX")]
        digest = hashlib.sha1(" ".join(self.cmake_args).encode()).hexdigest()[:6]
        return "-".join([self.arch, *[n for n in names if n in ("avx2", "avx_vnni", "avx512", "avx512_vnni",
                                                                 "avx512_bf16", "avx512_vbmi")], digest])

    def missing_on(self, cpu: CpuFacts) -> list[str]:
        """Flags this build uses that `cpu` does not report: running it there could crash (SIGILL)."""
        if cpu.arch != self.arch:
            return [f"a {self.arch} CPU (this one is {cpu.arch})"]
        return [f for f in self.requires if f not in cpu.flags]


def choose_kernels(cpu: CpuFacts) -> KernelChoice:
    if cpu.arch not in ("x86_64", "AMD64"):
        return KernelChoice(cpu.arch, (), _ALWAYS_OFF if cpu.arch.startswith("x86") else (), ())
    enabled, disabled, requires = [], list(_ALWAYS_OFF), []
    for flags, option in _X86_OPTIONS:
        usable = cpu.has(*flags) and (option not in _AVX512_EXTRAS or "GGML_AVX512" in enabled)
        (enabled if usable else disabled).append(option)
        if usable:
            requires += flags
    return KernelChoice("x86_64", tuple(enabled), tuple(disabled), tuple(requires))


# --- where builds live -------------------------------------------------------------------------------


def cache_root() -> Path:
    return Path(os.environ.get("LAB_LLAMA_CACHE", Path.home() / ".cache" / "llm-tradeoff-lab" / "llama.cpp"))


def build_dir(choice: KernelChoice) -> Path:
    return cache_root() / f"{VERSION}-{choice.key}"


def binding_lib_dir() -> Path | None:
    """Where the installed binding loads libllama from (llama_cpp/lib), or None when it is not installed."""
    import importlib.util
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


@dataclass(frozen=True)
class BuildInfo:
    version: str
    key: str
    cmake_args: list[str]
    requires: list[str]
    cpu: str  # the CPU it was built on
    built_at: str
    compile_s: float

    @classmethod
    def read(cls, folder: Path) -> "BuildInfo | None":
        try:
            return cls(**json.loads((folder / STAMP).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def complete(folder: Path) -> bool:
    bins = folder / "bin"
    return (BuildInfo.read(folder) is not None and all((bins / t).is_file() for t in TOOLS)
            and any(bins.glob("libllama.so*")) and any((folder / "wheel").glob("*.whl")))


# --- the build ---------------------------------------------------------------------------------------


def _run(cmd: list[str], log, env: dict | None = None, cwd: Path | None = None) -> None:
    log.write(f"\n$ {' '.join(cmd)}\n")
    log.flush()
    subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True, env=env, cwd=cwd)


def fetch_source(log) -> Path:
    """The pinned sdist, downloaded once into the cache (PyPI is the only place it comes from)."""
    src = cache_root() / "src"
    found = sorted(src.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    if not found:
        src.mkdir(parents=True, exist_ok=True)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
              "--no-binary", ":all:", f"{PACKAGE}=={VERSION}", "-d", str(src)], log)
        found = sorted(src.glob(f"llama_cpp_python-{VERSION}.tar.gz"))
    return found[0]


def build(choice: KernelChoice, cpu: CpuFacts, log) -> Path:
    """Compile the vendored llama.cpp once (libraries + tools) and wheel the binding without its own compile."""
    sdist = fetch_source(log)
    target = build_dir(choice)
    with tempfile.TemporaryDirectory(prefix="lab-llama-build-") as tmp:
        with tarfile.open(sdist) as tar:
            tar.extractall(tmp, filter="data")
        tree = next(Path(tmp).glob("llama_cpp_python-*"))
        out = Path(tmp) / "build"
        t0 = time.monotonic()
        cmake = _cmake(log)
        _run([cmake, "-S", str(tree / "vendor" / "llama.cpp"), "-B", str(out), *_COMMON, *choice.cmake_args], log)
        _run([cmake, "--build", str(out), "--config", "Release", "-j", str(os.cpu_count() or 2),
              "--target", "llama", *TOOLS], log)
        compile_s = time.monotonic() - t0
        # the binding's wheel, pure Python: the libraries come from the compile above
        wheel_env = os.environ | {"CMAKE_ARGS": "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"}
        staging = Path(tmp) / "staging"
        _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
              "-w", str(staging / "wheel"), str(tree)], log, env=wheel_env)
        (staging / "bin").mkdir()
        for path in (out / "bin").iterdir():
            if path.name in TOOLS or path.name.startswith("lib"):  # libfoo.so -> libfoo.so.0 links stay links
                shutil.copy2(path, staging / "bin" / path.name, follow_symlinks=False)
        info = BuildInfo(VERSION, choice.key, choice.cmake_args, list(choice.requires), cpu.model_name,
                         time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), round(compile_s, 1))
        (staging / STAMP).write_text(json.dumps(asdict(info), indent=2))
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), str(target))  # whole, or not at all
    return target


def _cmake(log) -> str:
    """The system's CMake, else the one PyPI ships as a wheel, installed into this environment."""
    found = shutil.which("cmake") or shutil.which("cmake", path=str(Path(sys.executable).parent))
    if found:
        return found
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "cmake"], log)
    return str(Path(sys.executable).parent / "cmake")


def install(folder: Path, log) -> None:
    """The binding from the cached wheel, with this build's libraries where it loads them."""
    wheel = next((folder / "wheel").glob("*.whl"))
    _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-deps",
          "--force-reinstall", str(wheel)], log)
    lib = binding_lib_dir()
    lib.mkdir(parents=True, exist_ok=True)
    for path in (folder / "bin").glob("lib*"):
        (lib / path.name).unlink(missing_ok=True)
        shutil.copy2(path, lib / path.name, follow_symlinks=False)
    shutil.copy2(folder / STAMP, lib / STAMP)


def installed() -> BuildInfo | None:
    lib = binding_lib_dir()
    return BuildInfo.read(lib) if lib is not None else None


def ensure(log_path: Path, force: bool = False) -> str:
    """Build for this CPU unless cached, install unless installed; a sentence saying what happened."""
    cpu = this_cpu()
    choice = choose_kernels(cpu)
    folder = build_dir(choice)
    failed = folder.with_name(folder.name + ".failed")
    now = installed()
    if not force and now is not None and now.key == choice.key and complete(folder):
        return f"llama.cpp {VERSION} for {choice.key} is installed"
    if failed.exists() and not force:
        return (f"llama.cpp did not build on this CPU before (log: {failed}); the GGUF variants are unavailable. "
                "Rebuild with `make llama LLAMA_REBUILD=1`.")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("a") as log:
        try:
            if force or not complete(folder):
                print(f"Compiling llama.cpp {VERSION} for this CPU ({choice.key}): once, several minutes; "
                      f"log: {log_path}", flush=True)
                build(choice, cpu, log)
            install(folder, log)
        except (subprocess.CalledProcessError, OSError, StopIteration) as e:
            log.write(f"\nfailed: {e}\n")
            failed.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(log_path, failed)
            return (f"note: llama.cpp did not build here ({e}; see {log_path}); the GGUF variants and GGUF serving "
                    "will say they are unavailable")
    failed.unlink(missing_ok=True)
    info = BuildInfo.read(folder)
    return f"llama.cpp {VERSION} for {choice.key} installed (compiled in {info.compile_s:.0f} s on {info.cpu})"


# --- what the rest of the lab asks -------------------------------------------------------------------


def tools_dir() -> Path | None:
    """The folder with this CPU's llama.cpp tools, or None when they are not built here."""
    folder = build_dir(choose_kernels(this_cpu()))
    return folder / "bin" if complete(folder) else None


def why_not_tools() -> str | None:
    """None when llama.cpp's tools can run on this CPU; else why not, and what to do."""
    choice = choose_kernels(this_cpu())
    folder = build_dir(choice)
    if complete(folder):
        return None
    failed = folder.with_name(folder.name + ".failed")
    if failed.exists():
        return (f"llama.cpp's tools failed to build on this CPU (log: {failed}); "
                "rebuild with `make llama LLAMA_REBUILD=1`")
    return f"llama.cpp's tools are not built for this CPU ({choice.key}); run `make setup` to build them"


def tool(name: str) -> Path:
    """The path of one llama.cpp tool built for this CPU; a clear error when it is not there."""
    if name not in TOOLS:
        raise ValueError(f"{name!r} is not one of the llama.cpp tools the lab builds: {', '.join(TOOLS)}")
    reason = why_not_tools()
    if reason is not None:
        raise FileNotFoundError(reason)
    return tools_dir() / name


def why_not_binding() -> str | None:
    """None when the installed binding's libraries run on this CPU; else why not (a build made for another CPU)."""
    info = installed()
    if info is None:
        return None  # a binding installed some other way: the import will say what it says
    cpu = this_cpu()
    missing = [f for f in info.requires if f not in cpu.flags]
    if missing:
        return (f"the installed llama.cpp was compiled for a CPU with {', '.join(missing)}, which this CPU "
                f"({cpu.model_name}) lacks; run `make setup` to build one for it")
    return None


def describe() -> str:
    cpu = this_cpu()
    choice = choose_kernels(cpu)
    info = installed()
    lines = [f"CPU: {cpu.model_name} ({cpu.vendor} {cpu.identity}; {', '.join(cpu.speed_features) or 'no SIMD'})",
             f"kernels for this CPU: {choice.key} ({' '.join(choice.cmake_args)})",
             f"tools: {tools_dir() or why_not_tools()}",
             f"binding: {'build ' + info.key if info else 'not installed by the lab'}"
             + (f" — {why_not_binding()}" if why_not_binding() else "")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.runtimes.llamacpp_build", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["install", "status"])
    parser.add_argument("--log", type=Path, default=Path(sys.prefix) / "llama-cpp-build.log")
    parser.add_argument("--force", action="store_true", help="rebuild even if this CPU's build is cached")
    args = parser.parse_args(argv)
    if args.command == "status":
        print(describe())
        return 0
    print(ensure(args.log, args.force))
    return 0  # a failed build never fails the install: the rest of the lab works without llama.cpp


if __name__ == "__main__":
    sys.exit(main())
