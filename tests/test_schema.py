"""The canonical schema equals the official network's state_dict, and both backends mirror it."""

import pytest

from film.common.spec import OFFICIAL, TINY, num_params, param_schema, tap_names

# Hand-copied from the official Net's state_dict (torch 2.x, Net(hidden_dim=256, image2text_dim=32)).
OFFICIAL_SAMPLES = {
    "text_process.conv.weight": (256, 768, 1),
    "restormerca1.convA1.weight": (32, 1, 3, 3),
    "restormerca2.convB1.weight": (32, 32, 3, 3),
    "restormerca1.preluA1.weight": (1,),
    "restormerca1.convA2.weight": (32, 32, 1, 1),
    "restormerca1.convA3.weight": (32, 64, 1, 1),
    "restormerca1.restormerA1.attn.temperature": (8, 1, 1),
    "restormerca1.restormerA1.attn.qkv_dwconv.weight": (96, 1, 3, 3),
    "restormerca1.restormerA1.ffn.project_in.weight": (256, 32, 1, 1),
    "restormerca1.restormerA1.ffn.project_out.weight": (32, 128, 1, 1),
    "restormerca3.cross_attentionA2.multihead_attn.in_proj_weight": (768, 256),
    "restormerca3.cross_attentionA2.multihead_attn.out_proj.bias": (256,),
    "restormerca2.imagef2textfB1.conv.weight": (32, 32, 1, 1),
    "restormer1.norm1.body.weight": (64,),
    "restormer1.ffn.dwconv.weight": (512, 1, 3, 3),
    "conv1.weight": (32, 64, 1, 1),
    "conv2.weight": (1, 32, 1, 1),
    "conv2.bias": (1,),
}


def test_official_counts():
    schema = param_schema(OFFICIAL)
    assert len(schema) == 189
    assert num_params(OFFICIAL) == 2_070_235
    for name, shape in OFFICIAL_SAMPLES.items():
        assert schema[name] == shape, name
    assert list(schema)[:2] == ["text_process.conv.weight", "text_process.conv.bias"]
    assert list(schema)[-1] == "conv2.bias"
    assert OFFICIAL.num_tokens == 13824


def test_tiny_has_same_names():
    assert list(param_schema(TINY)) == list(param_schema(OFFICIAL))


@pytest.mark.parametrize("cfg", [OFFICIAL, TINY], ids=["official", "tiny"])
def test_torch_state_dict_is_schema(tb, cfg):
    from film.backends.torch.model import Net

    sd = Net(cfg).state_dict()
    schema = param_schema(cfg)
    assert list(sd) == list(schema)  # same order as the official state_dict
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(schema)


@pytest.mark.parametrize("cfg", [OFFICIAL, TINY], ids=["official", "tiny"])
def test_jittor_state_dict_is_schema(jb, cfg):
    from film.backends.jittor.model import Net

    sd = Net(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == dict(param_schema(cfg))


def test_tap_names_unique():
    names = tap_names(OFFICIAL)
    assert len(names) == len(set(names)) == 1 + 6 * 3 + 5


def test_torch_and_jittor_models_line_up(tb, jb):
    """backends/torch/model.py and backends/jittor/model.py mirror each other: the same module tree (every
    attribute path, in order) with the same class names, and the same classes defined in both files (in the
    spirit of transformers' "Copied from" check). A rename or an added block on one side fails here."""
    import ast
    import os

    from film.common.spec import TINY

    # framework classes whose names differ only by framework
    alias = {"NonDynamicallyQuantizableLinear": "Linear"}
    tree = {}
    for name, impl in (("torch", tb), ("jittor", jb)):
        model = impl.build_model(TINY, None, "cpu")
        tree[name] = [(path, alias.get(type(m).__name__, type(m).__name__)) for path, m in model.named_modules() if path]
    assert len(tree["torch"]) == len(tree["jittor"])
    diverged = [(t, j) for t, j in zip(tree["torch"], tree["jittor"]) if t != j]
    assert not diverged, f"module trees diverge: {diverged[:5]}"
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def classes(backend):
        with open(os.path.join(here, "film", "backends", backend, "model.py")) as f:
            return [n.name for n in ast.parse(f.read()).body if isinstance(n, ast.ClassDef)]

    # Conv2d, PReLU: Jittor subclasses of the framework's layers (oneDNN / fast convolution paths, a float64
    # slope gradient); torch uses nn.Conv2d / nn.PReLU, of the same names
    assert [c for c in classes("jittor") if c not in ("Conv2d", "PReLU")] == classes("torch")
