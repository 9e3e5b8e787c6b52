"""The benchmarks' record of where they ran (benchmarks/machine.py), the FLOP count that
turns img/s into GFLOP/s (benchmarks/flops.py), and train_throughput.py's fairness to
torch: its channels_last twin computes the same logits, and its worker processes get
minicnn's malloc settings.  No speed is asserted: the sgemm probe runs a tiny GEMM."""
import copy
import re
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import minicnn
from minicnn import nn
from minicnn.fast import runtime

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    """benchmarks/ importable as its scripts see it (they import their siblings by name)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(BENCH))
        import flops
        import machine
        import train_throughput
        yield type("Bench", (), {"machine": machine, "flops": flops, "tt": train_throughput})


@pytest.fixture(scope="module")
def info(bench):
    return bench.machine.describe(1, sgemm_size=64, sgemm_reps=3)


def test_describe_names_cpu_software_threads_and_a_measured_sgemm_rate(info):
    cpu = info["cpu"]
    assert isinstance(cpu["model_name"], str) and cpu["model_name"]
    assert all(isinstance(cpu[k], str) for k in ("family", "model"))
    assert isinstance(cpu["simd"], list) and all(isinstance(f, str) for f in cpu["simd"])
    assert cpu["hypervisor"] is None or isinstance(cpu["hypervisor"], str)
    assert isinstance(cpu["cpus"], int) and 1 <= cpu["usable_cpus"] <= cpu["cpus"]
    assert info["threads"] == 1
    assert info["numpy"] == np.__version__ and info["numba"] == numba.__version__
    assert set(info["blas"]) == {"name", "version", "core", "config"}
    assert all(isinstance(v, str) and v for v in info["blas"].values())
    sgemm = info["sgemm"]
    assert sgemm["n"] == 64 and sgemm["reps"] == 3
    assert 0 < sgemm["gflops"] <= sgemm["gflops_best"]
    assert sgemm["gflops_1_thread"] == sgemm["gflops"]  # one thread asked: one probe, not two
    assert info["torch"] is None or set(info["torch"]) == {"version", "cpu_capability"}


def test_describe_reads_openblas_core_where_numpy_uses_openblas(info):
    if not runtime.loaded_libraries("openblas"):
        pytest.skip("NumPy here does not use OpenBLAS: its core cannot be read")
    assert info["blas"]["core"] != "unknown"
    assert info["blas"]["core"] in info["blas"]["config"]


def test_describe_reports_torch_exactly_when_it_is_installed(info):
    try:
        import torch
    except ImportError:
        assert info["torch"] is None
    else:
        assert info["torch"]["version"] == torch.__version__


def _machine(model_name="Intel(R) Xeon(R) Processor", family="6", model="207",
             simd=("avx2", "avx512f", "amx_tile"), core="SkylakeX", threads=2):
    return {"cpu": {"model_name": model_name, "family": family, "model": model, "simd": list(simd),
                    "hypervisor": "KVM", "cpus": 2, "usable_cpus": 2},
            "threads": threads, "numpy": "2.4.6", "numba": "0.68.1", "torch": None,
            "blas": {"name": "scipy-openblas", "version": "0.3.31", "core": core, "config": "unknown"},
            "sgemm": {"n": 2048, "reps": 7, "gflops": 190.0, "gflops_best": 200.0, "gflops_1_thread": 100.0}}


def test_slug_names_cpu_isa_blas_core_and_threads(bench):
    assert bench.machine.slug(_machine()) == "xeon-f6m207-avx512-openblas-skylakex-t2"
    assert bench.machine.slug(_machine(simd=("avx2",), core="unknown", threads=1)) == "xeon-f6m207-avx2-openblas-t1"
    assert bench.machine.slug(_machine(simd=())).startswith("xeon-f6m207-generic-")
    assert bench.machine.slug(_machine(family="unknown")).startswith("xeon-avx512-")


@pytest.mark.parametrize("model_name", ["AMD EPYC 9R14 96-Core Processor", "Intel(R) Core(TM) i7/8700 @ 3.2GHz",
                                        "", "unknown"])
def test_slug_is_file_system_safe_and_ignores_measurements(bench, info, model_name):
    described = _machine(model_name=model_name)
    for machine_info in (info, described):
        name = bench.machine.slug(machine_info)
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", name), name
        remeasured = copy.deepcopy(machine_info)
        remeasured["sgemm"].update(gflops=1.0, gflops_best=2.0, gflops_1_thread=0.5)
        remeasured["cpu"]["usable_cpus"] = 1
        assert bench.machine.slug(remeasured) == name


def test_markdown_header_states_the_machine_and_sgemm_rate(bench, info):
    text = bench.machine.markdown_header(_machine())
    for part in ("Intel(R) Xeon(R) Processor", "family 6, model 207", "KVM", "SkylakeX", "0.3.31",
                 "2 threads", "190 GFLOP/s", "100 GFLOP/s with 1", "torch not installed"):
        assert part in text, part
    assert info["blas"]["core"] in bench.machine.markdown_header(info)


def _tiny_model():
    # 1x6x6 -> conv 3x3 -> 2x4x4 -> grouped conv 3x3, stride 2, padding 1 -> 4x2x2 -> linear 16 -> 3
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2),
                         nn.Flatten(), nn.Linear(16, 3))


def test_flops_count_forward_and_training_by_hand(bench):
    # multiply-adds per image: conv1 2*1*9 per pixel x 16 = 288, conv2 4*1*9 x 4 = 144, linear 16*3 = 48
    # training: 2 forward + 2 weight gradient + 2 input gradient, except conv1 (its input is the image)
    model = _tiny_model()
    model.eval()
    assert bench.flops.count_flops(model, (1, 6, 6)) == {"forward": 2 * (288 + 144 + 48),
                                                         "train": 4 * 288 + 6 * 144 + 6 * 48}
    assert not model.training  # mode restored
    model.train()
    bench.flops.count_flops(model, (1, 6, 6))
    assert model.training


def test_flops_count_refuses_no_grad_mode(bench):
    with minicnn.no_grad(), pytest.raises(RuntimeError, match="no_grad"):
        bench.flops.count_flops(_tiny_model(), (1, 6, 6))


def test_torch_best_takes_the_better_format_per_measure(bench):
    contiguous = {"train": 100.0, "infer": 900.0, "peak_rss_mb": 500.0, "startup_s": 3.0}
    channels_last = {"train": 120.0, "infer": 800.0, "peak_rss_mb": 600.0, "startup_s": 2.5}
    best = bench.tt.torch_best({"contiguous": contiguous, "channels_last": channels_last})
    assert best == {"train": 120.0, "train_format": "channels_last", "infer": 900.0, "infer_format": "contiguous",
                    "peak_rss_mb": 500.0, "peak_rss_mb_format": "contiguous",
                    "startup_s": 2.5, "startup_s_format": "channels_last"}


def test_channels_last_twin_gives_the_same_logits(bench):
    torch = pytest.importorskip("torch")
    minicnn.manual_seed(0)
    model = bench.tt.build_minicnn("fashion_cnn")
    model.eval()
    images = np.random.default_rng(0).standard_normal((4, 1, 28, 28), dtype=np.float32)
    with minicnn.no_grad():
        expected = model(minicnn.tensor(images)).data
    outputs = {}
    for fmt in bench.tt.TORCH_FORMATS:
        twin, as_input = bench.tt.in_memory_format(bench.tt.torch_twin(model), fmt)
        twin.eval()
        x = as_input(images)
        wanted = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        assert x.is_contiguous(memory_format=wanted) and twin[0].weight.is_contiguous(memory_format=wanted)
        with torch.no_grad():
            outputs[fmt] = twin(x).numpy()
    np.testing.assert_allclose(outputs["channels_last"], outputs["contiguous"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outputs["channels_last"], expected, rtol=1e-4, atol=1e-4)


def test_malloc_env_is_minicnns_malloc_settings(bench):
    env = bench.tt.malloc_env()
    assert env == {"MALLOC_MMAP_THRESHOLD_": str(runtime.MALLOC_SETTINGS[-3]),
                   "MALLOC_TRIM_THRESHOLD_": str(runtime.MALLOC_SETTINGS[-1])}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tunables are Linux-only")
def test_a_process_given_malloc_env_runs_with_minicnns_settings(bench):
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); from train_throughput import malloc_tuned; " \
           "print(malloc_tuned())"

    def tuned(extra):
        environ = {k: v for k, v in bench.tt.thread_env(1).items() if not k.startswith("MALLOC_")}
        out = subprocess.run([sys.executable, "-c", code], env={**environ, **extra}, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    untuned = tuned({})
    if untuned == "None":
        pytest.skip("not glibc: its malloc settings cannot be probed")
    assert untuned == "False"
    assert tuned(bench.tt.malloc_env()) == "True"


def test_a_run_names_the_checkout_it_started_on_and_any_change_during_it(bench, monkeypatch):
    """The results name the revision of the run's start; if the checkout changed before the
    end (the later worker processes ran other code), they say so."""
    import harness
    seen = iter(["abc1234", "abc1234", "def5678+changes"])
    monkeypatch.setattr(harness, "revision", lambda: next(seen))
    assert harness.revision_since(harness.revision()) == "abc1234"
    assert harness.revision_since("abc1234") == "abc1234 at the start, def5678+changes at the end"
