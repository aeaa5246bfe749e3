"""The hardware fingerprint tells apart machines that share a CPU name, and pages never mix two machines' records."""

import os

import pytest
from streamlit.testing.v1 import AppTest

from core.measure import benchmark
from core.measure.cpu import parse_cpuinfo
from core.store import ResultStore
from core.views import recommend
from tests.factories import make_record

# Realistic first blocks of /proc/cpuinfo (cloud VMs often show only "AMD EPYC" as the model name).
EPYC_ROME = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 49
model name	: AMD EPYC
stepping	: 0
microcode	: 0x1000065
cpu MHz		: 2249.998
cache size	: 512 KB
siblings	: 2
cpu cores	: 1
fpu		: yes
cpuid level	: 16
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid tsc_known_freq \
pni pclmulqdq ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy \
cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 \
smep bmi2 rdseed adx smap clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 clzero xsaveerptr arat npt nrip_save umip rdpid
bugs		: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass retbleed smt_rsb
bogomips	: 4499.99
address sizes	: 48 bits physical, 48 bits virtual
power management:

processor	: 1
vendor_id	: AuthenticAMD
cpu family	: 23
model		: 49
model name	: AMD EPYC
stepping	: 0
flags		: fpu avx2 fma
"""

EPYC_GENOA = """\
processor	: 0
vendor_id	: AuthenticAMD
cpu family	: 25
model		: 17
model name	: AMD EPYC
stepping	: 1
microcode	: 0xa10113e
cpu MHz		: 2599.998
cache size	: 1024 KB
siblings	: 2
cpu cores	: 1
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid tsc_known_freq \
pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm \
cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext invpcid_single ssbd ibrs ibpb stibp vmmcall \
fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb \
avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero xsaveerptr wbnoinvd arat npt \
nrip_save umip pku ospke avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq rdpid fsrm
bogomips	: 5199.99
address sizes	: 52 bits physical, 57 bits virtual
power management:
"""

XEON_SAPPHIRE_RAPIDS = """\
processor	: 0
vendor_id	: GenuineIntel
cpu family	: 6
model		: 143
model name	: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
stepping	: 8
microcode	: 0xffffffff
cpu MHz		: 2699.998
cache size	: 107520 KB
flags		: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid tsc_known_freq pni pclmulqdq ssse3 \
fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch \
invpcid_single ssbd ibrs ibpb stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 hle avx2 smep bmi2 erms invpcid rtm avx512f \
avx512dq rdseed adx smap avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves \
avx_vnni avx512_bf16 arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni \
avx512_bitalg avx512_vpopcntdq la57 rdpid cldemote movdiri movdir64b fsrm md_clear serialize tsxldtrk amx_bf16 \
avx512_fp16 amx_tile amx_int8 arch_capabilities
bogomips	: 5399.99
address sizes	: 52 bits physical, 57 bits virtual
"""

NEOVERSE_V1 = """\
processor	: 0
BogoMIPS	: 2100.00
Features	: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop \
sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg dcpodp svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x1
CPU part	: 0xd40
CPU revision	: 1

processor	: 1
BogoMIPS	: 2100.00
"""


def fingerprint(text: str, arch: str = "x86_64", gpu: str | None = None) -> str:
    return benchmark.fingerprint_of(parse_cpuinfo(text, arch), 2, 24.0, gpu)


# ---------------------------------------------------------------- reading /proc/cpuinfo


def test_parse_cpuinfo_reads_vendor_family_model_stepping_and_features():
    rome, genoa = parse_cpuinfo(EPYC_ROME, "x86_64"), parse_cpuinfo(EPYC_GENOA, "x86_64")
    assert (rome.model_name, rome.vendor, rome.identity) == ("AMD EPYC", "AuthenticAMD", "family 23 model 49 stepping 0")
    assert rome.speed_features == ["AVX2", "FMA", "F16C"]  # the first processor's flags, not the second's
    assert (genoa.model_name, genoa.identity) == ("AMD EPYC", "family 25 model 17 stepping 1")
    assert genoa.speed_features == ["AVX2", "FMA", "F16C", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16", "AVX-512 VBMI"]
    xeon = parse_cpuinfo(XEON_SAPPHIRE_RAPIDS, "x86_64")
    assert (xeon.vendor, xeon.family, xeon.model, xeon.stepping) == ("GenuineIntel", "6", "143", "8")
    assert {"AVX-VNNI", "AVX-512", "AMX", "AMX-INT8", "AMX-BF16"} <= set(xeon.speed_features)
    arm = parse_cpuinfo(NEOVERSE_V1, "aarch64")
    assert (arm.vendor, arm.family, arm.model, arm.stepping) == ("ARM implementer 0x41", "8", "0xd40", "0x1r1")
    assert arm.speed_features == ["NEON", "NEON dot product", "I8MM", "SVE"]
    assert arm.model_name == "aarch64" and arm.arch == "aarch64"  # no model name in the text: not this machine's


# ---------------------------------------------------------------- the fingerprint


def test_machines_sharing_a_cpu_name_get_different_fingerprints():
    rome, genoa, xeon, arm = (fingerprint(EPYC_ROME), fingerprint(EPYC_GENOA), fingerprint(XEON_SAPPHIRE_RAPIDS),
                              fingerprint(NEOVERSE_V1, "aarch64"))
    assert len({rome, genoa, xeon, arm}) == 4
    assert rome == "AMD EPYC (AuthenticAMD family 23 model 49 stepping 0; AVX2), 2 cores, 24 GiB RAM"
    assert genoa == ("AMD EPYC (AuthenticAMD family 25 model 17 stepping 1; AVX2, AVX-512, AVX-512 VNNI, AVX-512 BF16, "
                     "AVX-512 VBMI), 2 cores, 24 GiB RAM")
    assert "AVX-512" not in rome and "AMX" not in genoa
    assert "AMX, AMX-INT8, AMX-BF16" in xeon and xeon.startswith("Intel(R) Xeon(R) Platinum 8481C")
    assert arm == ("aarch64 (ARM implementer 0x41 family 8 model 0xd40 stepping 0x1r1; NEON, NEON dot product, I8MM, "
                   "SVE), 2 cores, 24 GiB RAM")


def test_an_avx2_only_and_an_avx512_chip_differ_even_with_the_same_family_and_model():
    masked = EPYC_GENOA.replace(" avx512", " no512")  # the same chip with AVX-512 hidden by the hypervisor
    assert fingerprint(masked) != fingerprint(EPYC_GENOA) and "AVX-512" not in fingerprint(masked)


def test_the_same_facts_give_the_same_string():
    assert fingerprint(EPYC_GENOA) == fingerprint(EPYC_GENOA)
    assert benchmark.hardware_fingerprint("cpu") == benchmark.hardware_fingerprint("cpu")
    here = benchmark.hardware_fingerprint("cpu")
    assert here.startswith(benchmark.cpu_model()) and f", {os.cpu_count()} cores, " in here


def test_the_gpu_leads_the_fingerprint_when_there_is_one():
    with_gpu = fingerprint(EPYC_GENOA, gpu="NVIDIA H100 80GB HBM3")
    assert with_gpu == "NVIDIA H100 80GB HBM3 + " + fingerprint(EPYC_GENOA)


def test_a_cpu_with_nothing_to_read_is_named_only():
    from core.measure.cpu import CpuFacts

    assert benchmark.fingerprint_of(CpuFacts("arm", "?", "?", "?", "?", frozenset(), "arm64"), 8, 16.0) == \
        "arm, 8 cores, 16 GiB RAM"


def test_the_old_style_fingerprint_is_what_records_before_this_change_carry():
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    assert benchmark.old_style_fingerprint("cpu") == f"{benchmark.cpu_model()}, {os.cpu_count()} cores, {ram_gib:.0f} GiB RAM"


# ---------------------------------------------------------------- one machine at a time on the pages

HERE = benchmark.hardware_fingerprint("cpu")
OLD_HERE = benchmark.old_style_fingerprint("cpu")
OTHER = fingerprint(EPYC_ROME)
MODEL = "smollm2-135m-instruct"

pytestmark = pytest.mark.usefixtures("fresh_caches")


def seed(hardware: str, techniques: dict[str, float], run_id: str) -> None:
    """One sweep on one machine: technique -> decode tokens/s, labelled so each machine's rows are recognisable."""
    store = ResultStore()
    for technique, speed in techniques.items():
        family = "reference" if technique == "fp32" else "quantization"
        store.add(make_record(model=MODEL, hardware=hardware, technique=technique, family=family, run_id=run_id,
                              label=f"{technique} on {run_id}", decode_tokens_per_s_median=speed,
                              top1_agreement=1.0 if technique == "fp32" else 0.97))


def page(name: str) -> AppTest:
    from pathlib import Path

    return AppTest.from_file(str(Path(__file__).resolve().parent.parent / "pages" / name), default_timeout=60)


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_the_map_shows_one_machine_at_a_time():
    seed(HERE, {"fp32": 20.0, "nf4": 25.0}, "here")
    seed(OTHER, {"fp32": 5.0, "int8": 0.6, "bf16": 4.0}, "other")
    at = page("tradeoff_map.py").run()
    no_errors(at)
    assert set(at.dataframe[0].value["variant"]) == {"fp32 on here", "nf4 on here"}
    assert not any("never measured on this machine" in i.value for i in at.info)
    machine = next(s for s in at.selectbox if s.label == "Machine the numbers were measured on")
    assert machine.value == HERE and set(machine.options) == {HERE, OTHER}
    machine.set_value(OTHER).run()
    no_errors(at)
    assert set(at.dataframe[0].value["variant"]) == {"fp32 on other", "int8 on other", "bf16 on other"}


def test_records_only_from_other_machines_are_named_in_words_and_shown_one_at_a_time():
    seed(OLD_HERE, {"fp32": 20.0, "nf4": 25.0}, "before")
    seed(OTHER, {"fp32": 5.0, "int8": 0.6, "bf16": 4.0}, "other")  # the newest: selected first
    at = page("decide.py").run()
    no_errors(at)
    said = " ".join(i.value for i in at.info)
    assert "never measured on this machine" in said and "Its records were measured on other machines" in said
    assert f"- {OTHER}: 3 records\n" in said
    assert f"- {OLD_HERE}: 2 records (named before the lab told CPUs apart" in said  # this machine's old name, said so
    assert any(OTHER in c.value for c in at.caption if c.value.startswith("Speeds measured on"))
    answer = " ".join(s.value for s in at.success) + " ".join(m.value for m in at.markdown)
    assert "on other" in answer and "on before" not in answer
    monthly = next(d.value for d in at.dataframe if any(str(c).startswith("$ per month") for c in d.value.columns))
    assert len(monthly) == 3


def test_recommend_refuses_a_history_from_another_machine():
    records = [make_record(hardware="a"), make_record(technique="nf4", label="NF4", hardware="a")]
    with pytest.raises(ValueError, match="one machine at a time"):
        recommend.recommend(records, recommend.Constraints(), history=records + [make_record(hardware="b")])


def test_the_report_never_borrows_decides_bill_for_another_machine(monkeypatch):
    from core.views import report

    seed(HERE, {"fp32": 20.0, "nf4": 25.0}, "here")
    seed(OTHER, {"fp32": 5.0}, "other")
    notes = []
    build = report.build_report
    monkeypatch.setattr(report, "build_report", lambda *a, **k: notes.append(k["bill_note"]) or build(*a, **k))
    at = page("report.py")
    at.session_state["decide_bill"] = ((MODEL, OTHER), [{"variant": "fp32 on other"}], "the bill of the other machine")
    at.run()
    no_errors(at)
    assert notes and "the other machine" not in notes[-1] and notes[-1].startswith("The default traffic")
