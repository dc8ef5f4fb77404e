"""`film text` / `film describe` / `film.encode_text` on tiny random models built here (nothing is downloaded).

The reference for the features is a direct transformers computation written out in the test: the
Q-Former's last_hidden_state of each paragraph alone, A then B."""

from __future__ import annotations

import os

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

from conftest import run_cli as run  # noqa: E402

WORDS = (
    "the a an of and in is image infrared visible bright dark person people car road tree sky building light scene "
    "shows with on warm targets texture details mri ct brain tissue over under exposed near far focus"
).split()


def _tokenizer(folder):
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS + list("abcdefghijklmnopqrstuvwxyz.,0123456789")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w") as f:
        f.write("\n".join(vocab) + "\n")
    tok = transformers.BertTokenizerFast(path, do_lower_case=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})  # LAVIS's Q-Former tokenizer: bert-base-uncased + [DEC]
    return tok


def make_encoder(folder, width=768, text_input=True, seed=0):
    """A one-layer random Blip2TextModelWithProjection (768 wide, as the real Q-Former) and a tiny WordPiece
    tokenizer, saved with save_pretrained as a user's offline copy would be."""
    tok = _tokenizer(folder)
    cfg = transformers.Blip2Config(
        qformer_config=dict(hidden_size=width, num_hidden_layers=1, num_attention_heads=12, intermediate_size=64,
                            vocab_size=len(tok), max_position_embeddings=512, use_qformer_text_input=text_input,
                            encoder_hidden_size=32, cross_attention_frequency=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
        num_query_tokens=2, image_text_hidden_size=16,
    )
    torch.manual_seed(seed)
    model = transformers.Blip2TextModelWithProjection(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def direct(folder, paragraph):
    """The reference: transformers alone, one paragraph, no padding, tokenizer without token_type_ids."""
    model = transformers.Blip2TextModelWithProjection.from_pretrained(folder).eval()
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    ids = tok(paragraph, return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        return model(**ids).last_hidden_state[0].numpy()


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("enc") / "qformer")


PARAS = {
    "p1": ("A bright person on the road, warm targets in the dark.", "The visible image shows a car, a tree and the sky."),
    "p2": ("Infrared image of people near a building.", "Details of the building and the road in light."),
}


@pytest.fixture
def text_dirs(tmp_path, pairs_images):
    for side, k in (("A", 0), ("B", 1)):
        os.makedirs(tmp_path / "txt" / side)
        for name, paras in PARAS.items():
            (tmp_path / "txt" / side / f"{name}.txt").write_text(paras[k] + "\n", encoding="utf-8")
    return tmp_path / "txt" / "A", tmp_path / "txt" / "B"


@pytest.fixture
def pairs_images(tmp_path):
    """Two pairs of real sample crops named like the paragraphs."""
    import cv2

    from film.common.images import samples_root

    src = os.path.join(samples_root(), "IVF", "TNO")
    for sub in ("ir", "vi"):
        os.makedirs(tmp_path / "img" / sub)
        img = cv2.imread(os.path.join(src, sub, "07.png"))
        cv2.imwrite(str(tmp_path / "img" / sub / "p1.png"), img[:40, :48])
        cv2.imwrite(str(tmp_path / "img" / sub / "p2.png"), img[50:90, 60:108])
    return tmp_path / "img" / "ir", tmp_path / "img" / "vi"


def test_film_text_matches_direct_encoding(capsys, tmp_path, encoder, text_dirs):
    a_dir, b_dir = text_dirs
    code, out = run(capsys, "text", "--encoder", encoder, "--a-text", a_dir, "--b-text", b_dir, "-o", tmp_path / "out",
                    "--device", "cpu", "--batch-size", "2")
    assert code == 0, out
    assert "encoded 2 pair(s)" in out
    for name, (pa, pb) in PARAS.items():
        got = np.load(tmp_path / "out" / f"{name}.npy", allow_pickle=False)
        ra, rb = direct(encoder, pa), direct(encoder, pb)
        assert got.dtype == np.float32 and got.shape == (1, len(ra) + len(rb), 768)
        # order: A's tokens first ([CLS] ... [SEP]), then B's
        np.testing.assert_allclose(got[0, : len(ra)], ra, atol=1e-5)
        np.testing.assert_allclose(got[0, len(ra) :], rb, atol=1e-5)


def test_python_api_and_one_pair_form(capsys, tmp_path, encoder):
    import film
    from film.text import load_encoder

    pa, pb = PARAS["p1"]
    ref = np.concatenate([direct(encoder, pa), direct(encoder, pb)])[None]
    np.testing.assert_allclose(film.encode_text(pa, pb, encoder=encoder), ref, atol=1e-5)
    enc = load_encoder(encoder)  # loaded once, reused
    np.testing.assert_allclose(film.encode_text(pa, pb, encoder=enc), ref, atol=1e-5)
    code, out = run(capsys, "text", "--encoder", encoder, "--a", pa, "--b", pb, "-o", tmp_path / "one.npy")
    assert code == 0, out
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), ref, atol=1e-5)
    # fixed lengths for batching: each side padded (or cut) to N tokens
    fixed = film.encode_text(pa, pb, encoder=enc, max_tokens=32)
    assert fixed.shape == (1, 64, 768)
    n_a = len(direct(encoder, pa))
    np.testing.assert_allclose(fixed[0, :n_a], ref[0, :n_a], atol=1e-5)  # real tokens unchanged by padding
    cut = film.encode_text(pa, pb, encoder=enc, max_tokens=5)
    assert cut.shape == (1, 10, 768)


def test_save_encoder_roundtrip(capsys, tmp_path, encoder):
    code, out = run(capsys, "text", "--encoder", encoder, "--save-encoder", tmp_path / "copy")
    assert code == 0, out
    import film

    pa, pb = PARAS["p2"]
    np.testing.assert_allclose(film.encode_text(pa, pb, encoder=str(tmp_path / "copy")),
                               film.encode_text(pa, pb, encoder=encoder), atol=0)
    code, out = run(capsys, "text", "--encoder", encoder, "--save-encoder", tmp_path / "copy")
    assert code == 2 and "not empty" in out


@pytest.mark.parametrize("backend", ["torch", "jittor"])
def test_features_drive_film_fuse(capsys, tmp_path, encoder, text_dirs, pairs_images, backend, request):
    request.getfixturevalue("tb" if backend == "torch" else "jb")
    a_dir, b_dir = text_dirs
    assert run(capsys, "text", "--encoder", encoder, "--a-text", a_dir, "--b-text", b_dir, "-o", tmp_path / "feat")[0] == 0
    ir, vi = pairs_images
    code, out = run(capsys, "fuse", "--checkpoint", "random", "--backend", backend, "--device", "cpu", "--a", ir,
                    "--b", vi, "--text", tmp_path / "feat", "-o", tmp_path / "fused")
    assert code == 0, out
    assert sorted(os.listdir(tmp_path / "fused" / "Gray")) == ["p1.png", "p2.png"]


@pytest.mark.parametrize(
    "breakage,match",
    [
        (lambda a, b: os.remove(b / "p2.txt"), "no B paragraph for p2"),
        (lambda a, b: (a / "p1.txt").write_text("   \n"), "empty paragraph"),
        (lambda a, b: (a / "p1.txt").write_bytes(b"\xff\xfe\x00bad"), "not UTF-8"),
        (lambda a, b: [os.remove(p) for p in b.iterdir()], "no <name>.txt paragraphs (B)"),
    ],
)
def test_bad_paragraphs_one_line_no_npy(capsys, tmp_path, encoder, text_dirs, breakage, match):
    a_dir, b_dir = text_dirs
    breakage(a_dir, b_dir)
    code, out = run(capsys, "text", "--encoder", encoder, "--a-text", a_dir, "--b-text", b_dir, "-o", tmp_path / "out")
    assert code == 2 and match in out, out
    assert len([ln for ln in out.splitlines() if ln.strip()]) == 1, out
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []


def test_bad_encoders(capsys, tmp_path, text_dirs):
    a_dir, b_dir = text_dirs
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    (not_model / "readme.txt").write_text("hello")
    narrow = make_encoder(tmp_path / "narrow", width=384)
    no_text = make_encoder(tmp_path / "no_text", text_input=False)
    capsys.readouterr()  # save_pretrained's own progress bars
    for enc, match in ((not_model, "not a usable transformers BLIP-2 Q-Former text encoder"), (narrow, "width 384, FILM needs 768"),
                       (no_text, "use_qformer_text_input=False"), (tmp_path / "missing" / "enc", "no such folder")):
        code, out = run(capsys, "text", "--encoder", enc, "--a-text", a_dir, "--b-text", b_dir, "-o", tmp_path / "o")
        assert code == 2 and match in out, out
        assert len([ln for ln in out.splitlines() if ln.strip()]) == 1, out
    assert not any(p.suffix == ".npy" for p in (tmp_path / "o").glob("*")) if (tmp_path / "o").exists() else True


def test_hub_unreachable_says_what_to_download(capsys, tmp_path, text_dirs, monkeypatch):
    """No weights in the cache and no network: one line in seconds, naming what to do (never a hang)."""
    import time

    a_dir, b_dir = text_dirs
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.time()
    code, out = run(capsys, "text", "--encoder", "Salesforce/blip2-itm-vit-g", "--a-text", a_dir, "--b-text", b_dir,
                    "-o", tmp_path / "o")
    assert code == 2 and "--save-encoder" in out and "cannot be reached" in out, out
    assert time.time() - t0 < 60


# --------------------------------------------------------------------------- film describe


def make_captioner(folder):
    tok = _tokenizer(folder)
    cfg = transformers.BlipConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=64, bos_token_id=tok.cls_token_id,
                         sep_token_id=tok.sep_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                           image_size=32, patch_size=8),
    )
    torch.manual_seed(0)
    model = transformers.BlipForConditionalGeneration(cfg).eval()
    proc = transformers.BlipProcessor(image_processor=transformers.BlipImageProcessor(size={"height": 32, "width": 32}),
                                      tokenizer=tok)
    model.save_pretrained(folder)
    proc.save_pretrained(folder)
    return str(folder)


def test_film_describe_then_text(capsys, tmp_path, encoder, pairs_images):
    ir, vi = pairs_images
    cap = make_captioner(tmp_path / "cap")
    capsys.readouterr()
    code, out = run(capsys, "describe", "--a", ir, "--b", vi, "--task", "IVF", "-o", tmp_path / "para", "--captioner", cap)
    assert code == 0, out
    a_txt = (tmp_path / "para" / "A" / "p1.txt").read_text()
    b_txt = (tmp_path / "para" / "B" / "p1.txt").read_text()
    assert a_txt.startswith("This is an infrared image of ") and b_txt.startswith("This is a visible image of ")
    assert sorted(os.listdir(tmp_path / "para" / "B")) == ["p1.txt", "p2.txt"]
    # edited paragraphs are never overwritten silently
    code, out = run(capsys, "describe", "--a", ir, "--b", vi, "--task", "IVF", "-o", tmp_path / "para", "--captioner", cap)
    assert code == 2 and "--overwrite" in out
    code, out = run(capsys, "text", "--encoder", encoder, "--a-text", tmp_path / "para" / "A", "--b-text",
                    tmp_path / "para" / "B", "-o", tmp_path / "feat")
    assert code == 0, out
    assert np.load(tmp_path / "feat" / "p2.npy").shape[-1] == 768


def test_describe_templates():
    from film.describe import TASKS, paragraph

    for task in TASKS:
        for side in ("A", "B"):
            p = paragraph(task, side, "  a man on a street . ")
            assert "a man on a street" in p and "{" not in p
    assert paragraph("MIF", "B", "a brain", "PET").startswith("This is a PET image of a brain.")
    assert paragraph("MIF", "B", "", None).startswith("This is a CT image of a scene.")
