import pytest

from datagen.hardware import cpu_flags, pick_dtype, resolve_dtype


def test_auto_follows_the_cpu_flags():
    assert pick_dtype("auto", gpu=False, cpu_flags=frozenset({"avx2", "avx512_bf16"})).name == "bfloat16"
    assert pick_dtype("auto", gpu=False, cpu_flags=frozenset({"amx_bf16", "avx512_bf16"})).reason.endswith(
        "amx_bf16+avx512_bf16"
    )
    plain = pick_dtype("auto", gpu=False, cpu_flags=frozenset({"avx2", "avx512f"}))
    assert plain.name == "float32" and "emulated" in plain.reason
    assert pick_dtype("auto", gpu=False, cpu_flags=frozenset()).name == "float32"


def test_auto_on_a_gpu_follows_its_bf16_support():
    assert pick_dtype("auto", gpu=True, cpu_flags=frozenset(), gpu_bf16=True).name == "bfloat16"
    assert pick_dtype("auto", gpu=True, cpu_flags=frozenset({"avx512_bf16"}), gpu_bf16=False).name == "float32"


def test_an_explicit_dtype_is_kept_in_either_spelling():
    for asked, name in [("bf16", "bfloat16"), ("fp32", "float32"), ("float16", "float16"), ("bfloat16", "bfloat16")]:
        d = pick_dtype(asked, gpu=False, cpu_flags=frozenset())
        assert d == (name, "set in the config")
    with pytest.raises(ValueError, match="float64"):
        pick_dtype("float64", gpu=False, cpu_flags=frozenset())


def test_resolve_reads_this_machine():
    d = resolve_dtype("auto", gpu=False)
    assert d.name == ("bfloat16" if {"amx_bf16", "avx512_bf16"} & cpu_flags() else "float32")
    assert str(d).startswith(d.name + " (auto: ")
