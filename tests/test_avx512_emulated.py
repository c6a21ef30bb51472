"""The AVX-512 kernels (csrc/quants_avx512.c) run and checked on a CPU without AVX-512.

On such a CPU (most laptops and many cloud VMs, this project's CI among them) the AVX-512 half of
every kernel and model test skips, so nothing would notice a change that breaks the kernels the
AVX-512 VNNI machines run. This module builds the extension once more in a scratch copy of the
project with LLMSTREAM_EMULATE_AVX512=1 — quants_avx512.c compiled for AVX2 with SIMDe carrying out
each AVX-512 intrinsic (csrc/avx512_emulated.h), cpu.c reporting the AVX-512 level — and runs the
kernel and model tests there, where the AVX-512 level is the default: every AVX-512 kernel pinned
bit for bit to its scalar twin, gemm to gemv, models against llama.cpp's logits, batch shapes and
thread counts bit-identical, repacking as it is on those CPUs.

Skips on a CPU that has AVX-512 (the main run covers it natively) or lacks AVX2. Needs SIMDe's
headers (Debian's libsimde-dev, installed by .ci/setup-system): without them it skips, except under
CI=true, where that fails. The build (about a minute) is kept in build/avx512-emulated/ and reused
while csrc/, the .pyx/.pxi files and setup.py are unchanged.
"""
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from conftest import ROOT, SHARED
from llmstream import _ops

# the tests whose subject is a kernel or a model's numbers (not the server, the page, the CLI)
KERNEL_AND_MODEL_TESTS = [
    "test_quants_simd.py", "test_tiles.py", "test_repack.py", "test_quants.py", "test_ops_simd.py",
    "test_iq4.py", "test_rope.py", "test_conformance.py", "test_model_reference.py",
    "test_batch_invariance.py", "test_threads.py", "test_build.py", "test_llama_fused.py",
    "test_phi2_fused.py", "test_generate.py", "test_kv.py", "test_smollm2.py",
]
NATIVE_INPUTS = ["setup.py", "csrc", "llmstream/_ops.pyx", "llmstream/_quants.pxi",
                 "llmstream/_llama.pxi", "llmstream/_phi2.pxi"]
COPIED = ["setup.py", "pyproject.toml", "README.md", "csrc", "llmstream", "config", "static", "tests",
          "scripts"]
HERE = ROOT / "build" / "avx512-emulated"


def _need(why: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(why)
    pytest.skip(why)


def _simde_compiles() -> bool:
    cc = os.environ.get("CC", "cc")
    probe = ("#pragma GCC target(\"avx2,fma,f16c\")\n#define SIMDE_ENABLE_NATIVE_ALIASES\n"
             "#include <simde/x86/avx512.h>\nint main(void){return 0;}\n")
    try:
        r = subprocess.run([cc, "-x", "c", "-fsyntax-only", "-"], input=probe, text=True,
                           capture_output=True)
    except OSError:
        return False
    return r.returncode == 0


def _native_hash() -> str:
    h = hashlib.sha256()
    for name in NATIVE_INPUTS:
        p = ROOT / name
        for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
            if f.is_file() and f.suffix in (".c", ".h", ".py", ".pyx", ".pxi"):
                h.update(str(f.relative_to(ROOT)).encode())
                h.update(f.read_bytes())
    return h.hexdigest()


def _copy_project(tree: Path):
    ignore = shutil.ignore_patterns("*.so", "_ops.c", "__pycache__", ".pytest_cache")
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, tree / name, ignore=ignore, dirs_exist_ok=True)
        elif src.exists():
            shutil.copy2(src, tree / name)


@pytest.fixture(scope="module")
def emulated_tree() -> Path:
    if not _ops.cpu_has_avx2():
        pytest.skip("the CPU lacks AVX2: the emulated AVX-512 kernels are built on the AVX2 ones")
    if _ops.cpu_has_avx512() and not _ops.simd_emulated():
        pytest.skip("the CPU has AVX-512 VNNI: the main run tests those kernels natively")
    if not _simde_compiles():
        _need("SIMDe's headers are missing (Debian: apt-get install libsimde-dev; .ci/setup-system "
              "does it): the AVX-512 kernels cannot be emulated on this AVX2 CPU")
    tree, stamp, want = HERE / "tree", HERE / "native.sha256", _native_hash()
    if not (stamp.exists() and stamp.read_text() == want
            and list((tree / "llmstream").glob("_ops*.so"))):
        shutil.rmtree(HERE, ignore_errors=True)
        tree.mkdir(parents=True)
        _copy_project(tree)
        env = dict(os.environ, LLMSTREAM_EMULATE_AVX512="1")
        r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace",
                            "--build-temp", str(HERE / "temp")],
                           cwd=tree, env=env, capture_output=True, text=True)
        assert r.returncode == 0, f"emulated build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        stamp.write_text(want)
    else:
        _copy_project(tree)   # the Python side and the tests as they are now
    return tree


def _env(tree: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LLMSTREAM_SIMD", "LLMSTREAM_AVX512", "LLMSTREAM_REPACK", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(tree)
    env["LLMSTREAM_TEST_SHARED"] = str(SHARED)
    return env


def test_the_copy_runs_the_avx512_level_through_simde(emulated_tree):
    code = ("from llmstream import _ops; "
            "print(_ops.__file__, _ops.simd_emulated(), _ops.cpu_has_avx512(), _ops.get_simd())")
    out = subprocess.run([sys.executable, "-c", code], cwd=emulated_tree, env=_env(emulated_tree),
                         capture_output=True, text=True, check=True).stdout.split()
    assert Path(out[0]).is_relative_to(emulated_tree), out
    assert out[1:] == ["True", "True", str(_ops.SIMD_AVX512)], out


@pytest.fixture(scope="module")
def emulated_results(emulated_tree) -> dict:
    """One pytest run of KERNEL_AND_MODEL_TESTS in the copy: {file: [(test, outcome, message)]}."""
    xml = HERE / "results.xml"
    xml.unlink(missing_ok=True)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        f"--junitxml={xml}"] + [f"tests/{f}" for f in KERNEL_AND_MODEL_TESTS],
                       cwd=emulated_tree, env=_env(emulated_tree), capture_output=True, text=True)
    assert xml.exists(), f"the emulated run did not finish:\n{(r.stdout + r.stderr)[-6000:]}"
    results = {}
    for case in ElementTree.parse(xml).iter("testcase"):
        file = case.get("classname", "").split(".")[1] + ".py"   # tests.test_x[.Class]
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            el = case.find(kind)
            if el is not None:
                outcome, message = kind, (el.get("message") or "") + "\n" + (el.text or "")
                break
        results.setdefault(file, []).append((case.get("name"), outcome, message))
    return results


@pytest.mark.parametrize("test_file", KERNEL_AND_MODEL_TESTS)
def test_kernel_and_model_tests_pass_at_the_avx512_level(emulated_results, test_file):
    cases = emulated_results.get(test_file)
    assert cases, f"{test_file} ran no test in the emulated copy"
    bad = [f"{name}: {outcome}\n{msg[-2000:]}" for name, outcome, msg in cases
           if outcome in ("failure", "error")]
    assert not bad, f"{test_file} at the emulated AVX-512 level:\n" + "\n".join(bad)
    assert any(outcome == "passed" for _, outcome, _ in cases)
    skipped_avx512 = [name for name, outcome, msg in cases if outcome == "skipped" and "AVX512" in msg]
    assert not skipped_avx512, f"AVX-512 cases skipped in {test_file}: {skipped_avx512}"


def test_the_bench_refuses_an_emulated_build(emulated_tree):
    r = subprocess.run([sys.executable, "-m", "llmstream.cli", "bench", "--no-llama-cpp"],
                       cwd=emulated_tree, env=_env(emulated_tree), capture_output=True, text=True)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "emulated" in r.stderr and "make build" in r.stderr and "Traceback" not in r.stderr, r.stderr
