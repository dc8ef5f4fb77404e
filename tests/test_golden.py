"""Both backends against outputs of the *official* IF-FILM network (tests/golden/make_golden.py)."""

import os

import numpy as np
import pytest

from film.common.images import to_uint8
from film.common.init import random_state_dict

HERE = os.path.dirname(__file__)
GOLDEN = np.load(os.path.join(HERE, "golden", "official_outputs.npz"))


def _load_cases():
    import sys

    sys.path.insert(0, os.path.join(HERE, "golden"))
    import make_golden

    return make_golden


mg = _load_cases()


def test_generators_unchanged():
    sd = random_state_dict(seed=mg.WEIGHT_SEED)
    assert mg.sha1(*sd.values()) == str(GOLDEN["weights_sha1"]), (
        "random_state_dict changed: regenerate the golden file"
    )
    for case in mg.CASES:
        name, a, b, text = mg.load_case(case)
        assert mg.sha1(a, b, text) == str(GOLDEN[f"{name}/inputs_sha1"]), f"{name}: inputs changed"


@pytest.fixture(scope="module")
def weights():
    return random_state_dict(seed=mg.WEIGHT_SEED)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "jittor"])
@pytest.mark.parametrize("case", mg.CASES, ids=[c[0] for c in mg.CASES])
def test_matches_official_network(request, backend, case, weights):
    """torch reproduces the official float32 output; jittor is checked against the official float64 output.

    The official float32 output itself is up to 1.1e-4 away from the same network in float64 on these
    pairs (torch's float32 vector_norm and matmul over H*W in the Restormer attention, amplified by
    LayerNorm/softmax; docs/parity.md). The torch backend calls the very same kernels, so it matches the
    float32 output to 1e-5. Jittor accumulates those two reductions in float64 and matches the float64
    output to 1e-5; its distance to the float32 output is then bounded by the official rounding error.
    """
    impl = request.getfixturevalue("tb" if backend == "torch" else "jb")
    model = impl.build_model(state_dict=weights, device="cpu")
    name, a, b, text = mg.load_case(case)
    out = impl.forward_numpy(model, a[None, None], b[None, None], text[None])[0, 0]
    ref32, ref64 = GOLDEN[f"{name}/output"], GOLDEN[f"{name}/output_float64"]
    official_rounding = float(np.abs(ref32 - ref64).max())
    d32, d64 = float(np.abs(out - ref32).max()), float(np.abs(out - ref64).max())
    if backend == "torch":
        assert d32 <= 1e-5, f"torch {name}: max_abs={d32:.2e} vs official float32"
    else:
        assert d64 <= 1e-5, f"jittor {name}: max_abs={d64:.2e} vs official float64"
        assert d32 <= official_rounding + 1e-5, (
            f"jittor {name}: {d32:.2e} vs official float32 (its own rounding {official_rounding:.2e})"
        )
    u8 = to_uint8(out)
    ref8 = GOLDEN[f"{name}/uint8"] if backend == "torch" else to_uint8(ref64)
    same = float((u8 == ref8).mean())
    # the min-max stretch turns ~1e-5 differences into a 1-level flip where a value sits on a boundary
    assert same >= 0.995 and int(np.abs(u8.astype(int) - ref8).max()) <= 1, (
        f"{backend} {name}: uint8 identical {same:.4%}"
    )


# Fast mode (channels_last, the CPU default of load_fuser / film fuse). Measured (CPU, 2026-11-25): max
# |fast - official float32| = 5.7e-6 (tno07_crop), 7.6e-6 (roadscene_07809), 8.4e-6 (lytro01_crop). Before
# the H*W reductions of the attention were made on contiguous copies it was 3.2e-4 on roadscene: strided
# float32 norms over 1e5 terms are ~10x less accurate, and this test is what caught it (docs/parity.md).
FAST_ATOL = 2e-5


@pytest.mark.slow
@pytest.mark.parametrize("case", mg.CASES, ids=[c[0] for c in mg.CASES])
def test_fast_mode_close_to_official_network(tb, case, weights):
    model = tb.set_fast(tb.build_model(state_dict=weights, device="cpu"))
    name, a, b, text = mg.load_case(case)
    out = tb.forward_numpy(model, a[None, None], b[None, None], text[None])[0, 0]
    d = float(np.abs(out - GOLDEN[f"{name}/output"]).max())
    assert d <= FAST_ATOL, f"fast {name}: max_abs={d:.2e} vs official float32"
    u8, ref8 = to_uint8(out), GOLDEN[f"{name}/uint8"]
    # measured: >= 99.96 % identical, every difference one level
    assert float((u8 == ref8).mean()) >= 0.995 and int(np.abs(u8.astype(int) - ref8).max()) <= 1
