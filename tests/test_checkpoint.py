"""Checkpoint formats: official layout loads, round trips are bit-identical, bad files are refused."""

import os
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from film.common.checkpoint import convert, load_checkpoint, read_raw, save_checkpoint, validate
from film.common.init import random_state_dict
from film.common.spec import TINY, param_schema
from film.errors import FilmError


@pytest.fixture(scope="module")
def sd():
    return random_state_dict(seed=5)


def _official_pth(tb, path, sd, prefix="module.", training=True):
    """Written by torch.save exactly as the official train.py does (DataParallel keys, training dict)."""
    import torch

    model = OrderedDict((prefix + k, torch.from_numpy(v.copy())) for k, v in sd.items())
    if not training:
        torch.save(model, path)
        return
    params = [torch.nn.Parameter(torch.from_numpy(v.copy())) for v in list(sd.values())[:3]]
    opt = torch.optim.Adam(params, lr=1e-5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=50, gamma=0.6)
    sum(p.sum() for p in params).backward()
    opt.step()
    sched.step()
    torch.save(
        {
            "model": model,
            "optimizer1": opt.state_dict(),
            "lr_schedule1": sched.state_dict(),
            "epoch": 4,
            "step": 99,
        },
        path,
    )


def _same(a: dict, b: dict):
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape and a[k].tobytes() == b[k].tobytes(), k


@pytest.mark.parametrize("prefix,training", [("module.", True), ("", True), ("module.", False), ("", False)])
def test_official_layouts_load(tb, tmp_path, sd, prefix, training):
    p = tmp_path / "ckpt.pth"
    _official_pth(tb, p, sd, prefix, training)
    ck = load_checkpoint(p)
    _same(ck.state_dict, sd)
    if training:
        assert ck.extras["epoch"] == 4 and ck.extras["step"] == 99


def test_round_trips_bit_identical(tb, tmp_path, sd):
    src = tmp_path / "official.pth"
    _official_pth(tb, src, sd)
    convert(str(src), str(tmp_path / "a.pkl"))
    convert(str(tmp_path / "a.pkl"), str(tmp_path / "back1.pth"))
    convert(str(src), str(tmp_path / "a.safetensors"))
    convert(str(tmp_path / "a.safetensors"), str(tmp_path / "back2.pth"))
    for p in ("a.pkl", "back1.pth", "a.safetensors", "back2.pth"):
        _same(load_checkpoint(tmp_path / p).state_dict, sd)


def test_written_pth_loads_in_official_dataparallel(tb, tmp_path, sd):
    """What the official test.py does: DataParallel(Net()).load_state_dict(torch.load(p)['model'])."""
    import torch

    from film.backends.torch.model import Net

    p = tmp_path / "out.pth"
    save_checkpoint(p, sd, {"epoch": 1, "step": 2})
    obj = torch.load(p, weights_only=True)
    assert set(obj) == {"model", "optimizer1", "lr_schedule1", "epoch", "step"}
    assert all(k.startswith("module.") for k in obj["model"])
    net = torch.nn.DataParallel(Net())
    net.load_state_dict(obj["model"], strict=True)
    for k, v in sd.items():
        assert torch.equal(net.module.state_dict()[k], torch.from_numpy(v))


def test_keep_optimizer_round_trip(tb, tmp_path, sd):
    import torch

    src = tmp_path / "official.pth"
    _official_pth(tb, src, sd)
    convert(str(src), str(tmp_path / "k.pkl"), keep_optimizer=True)
    convert(str(tmp_path / "k.pkl"), str(tmp_path / "k.pth"), keep_optimizer=True)
    a = torch.load(src, weights_only=True)
    b = torch.load(tmp_path / "k.pth", weights_only=True)
    assert a["lr_schedule1"] == b["lr_schedule1"]
    assert a["optimizer1"]["param_groups"] == b["optimizer1"]["param_groups"]
    for i, st in a["optimizer1"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, b["optimizer1"]["state"][i][name]), (i, name)


def test_pkl_loads_in_jittor_the_documented_way(jb, tmp_path, sd):
    import jittor as jt

    from film.backends.jittor.model import Net

    p = tmp_path / "w.pkl"
    save_checkpoint(p, sd)
    model = Net()
    model.load(jt.load(str(p))["model"])
    got = model.state_dict()
    for k, v in sd.items():
        np.testing.assert_array_equal(got[k].numpy(), v)


def test_jittor_saved_pkl_readable(jb, tmp_path, sd):
    """A .pkl written by jt.save({'model': model.state_dict()}) (jittor Vars inside) reads without jittor's loader."""
    import jittor as jt

    from film.backends.jittor.backend import build_model

    model = build_model(state_dict=sd, device="cpu")
    p = tmp_path / "jt.pkl"
    jt.save({"model": model.state_dict()}, str(p))
    _same(load_checkpoint(p).state_dict, sd)


class _Boom:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pkl_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"model": {"x": _Boom(marker)}}))
    with pytest.raises(FilmError, match="refused to load global"):
        load_checkpoint(p)
    assert not marker.exists()


def test_malicious_pth_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pth"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({"model": _Boom(marker)}, protocol=2))
        zf.writestr("archive/version", "3\n")
    with pytest.raises(FilmError, match="refused"):
        load_checkpoint(p)
    assert not marker.exists()


def test_schema_errors_list_everything(sd):
    bad = dict(sd)
    del bad["conv2.bias"]
    bad["conv1.weight"] = np.zeros((3, 3), np.float32)
    bad["extra.weight"] = np.zeros(1, np.float32)
    with pytest.raises(FilmError) as e:
        validate(bad)
    msg = str(e.value)
    assert "missing (1)" in msg and "conv2.bias" in msg
    assert "unexpected (1)" in msg and "extra.weight" in msg
    assert "wrong shape (1)" in msg and "conv1.weight: (3, 3) != (32, 64, 1, 1)" in msg


def test_other_network_and_tiny_config_refused(tmp_path):
    p = tmp_path / "tiny.safetensors"
    from safetensors.numpy import save_file

    save_file(dict(random_state_dict(TINY)), str(p))
    with pytest.raises(FilmError, match="wrong shape"):
        load_checkpoint(p)
    save_file({"fc.weight": np.zeros((2, 2), np.float32)}, str(p))
    with pytest.raises(FilmError, match="not a FILM checkpoint"):
        load_checkpoint(p)


@pytest.mark.parametrize(
    "name,data",
    [
        ("empty.pth", b""),
        ("trunc.pth", b"PK\x03\x04garbage"),
        ("text.pkl", b"hello"),
        ("empty.safetensors", b""),
        ("junk.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{bad json}"),
    ],
)
def test_garbage_files(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    with pytest.raises(FilmError):
        read_raw(p)


def test_truncated_real_checkpoint(tmp_path, sd):
    full = tmp_path / "full.pth"
    save_checkpoint(full, sd)
    raw = full.read_bytes()
    for cut in (len(raw) // 2, len(raw) - 100, 300):
        p = tmp_path / f"cut{cut}.pth"
        p.write_bytes(raw[:cut])
        with pytest.raises(FilmError):
            load_checkpoint(p)


def test_failed_write_keeps_previous_file(tmp_path, sd, monkeypatch):
    dst = tmp_path / "w.pkl"
    save_checkpoint(dst, sd)
    before = dst.read_bytes()

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("film.common.atomic.os.replace", full_disk)
    with pytest.raises(FilmError, match="No space left"):
        save_checkpoint(dst, random_state_dict(seed=9))
    assert dst.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["w.pkl"]  # no temp file left behind


def test_backends_load_strictly(tb, jb, sd):
    for impl in (tb, jb):
        bad = dict(sd)
        bad["restormer1.attn.temperature"] = np.ones((4, 1, 1), np.float32)
        with pytest.raises(FilmError, match="wrong shape"):
            impl.build_model(state_dict=bad, device="cpu")
    assert len(param_schema()) == 189


def test_written_files_get_the_usual_permissions(tmp_path, sd):
    """Atomic writes go through mkstemp (mode 0600); the result must have the mode open() would give
    (0666 minus the umask), or keep the mode of the file it replaces."""
    import stat

    from film.common.atomic import atomic_write_bytes

    old = os.umask(0o022)
    try:
        p = tmp_path / "w.safetensors"
        save_checkpoint(str(p), sd)
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o644
        os.chmod(p, 0o640)
        atomic_write_bytes(p, b"x")
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "n.json", b"{}")
        assert stat.S_IMODE(os.stat(tmp_path / "n.json").st_mode) == 0o600
    finally:
        os.umask(old)


def test_foreign_state_dict_is_one_line(tmp_path):
    """A Linear layer's state dict given as a checkpoint: one line saying how many tensors are missing, naming
    three of them, and what was found instead (it printed 17 more lines of names before)."""
    from safetensors.numpy import save_file

    p = tmp_path / "linear.safetensors"
    save_file({"weight": np.zeros((4, 3), np.float32), "bias": np.zeros(4, np.float32)}, str(p))
    with pytest.raises(FilmError) as e:
        load_checkpoint(p)
    msg = str(e.value)
    assert "\n" not in msg and "none of the 189 expected tensors found" in msg, msg
    assert "missing (189): text_process.conv.weight, text_process.conv.bias, " in msg and "and 186 more" in msg
    assert "unexpected (2): bias, weight" in msg  # as the file lists them
