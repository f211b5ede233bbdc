"""`harness export` (ONNX + torch.export), `harness index build/query`, `harness eval --show`,
on a tiny model trained on PNGs the test writes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.user_data import make_folder
from harness.config import build_config
from harness.core.checkpoint import load_model
from harness.data import read_dataset
from harness.data.transforms import eval_transform
from harness.serving.index import IndexParams, create_index, recall_against_exact
from harness.serving.retrieval_pictures import Neighbours, nearest_neighbours, pick_queries


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config):
    from harness.core.train import run_training

    root = tmp_path_factory.mktemp("own")
    data = make_folder(root / "images", classes=10, per_class=5)
    config = build_config(tiny_config(data={"name": "folder", "root": str(data)},
                                      train={"epochs": 1, "iters_per_epoch": 2}))
    result = run_training(config, root / "run")
    assert result.status == "completed"
    return root, data, root / "run" / "checkpoints" / "best.pt"


def _preprocess_as_recorded(path, pre) -> np.ndarray:
    """What a consumer of model.onnx does with model.onnx.json alone (PIL + numpy)."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    short = pre["resize_shorter_side"]
    size = (short, round(h * short / w)) if w <= h else (round(w * short / h), short)
    im = im.resize(size, Image.Resampling.BICUBIC)
    c = pre["center_crop"]
    left, top = int(round((im.width - c) / 2.0)), int(round((im.height - c) / 2.0))
    x = np.asarray(im.crop((left, top, left + c, top + c)), np.float32) / 255.0
    x = (x - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return x.transpose(2, 0, 1)


def test_onnx_export_reproduces_pytorch_with_recorded_preprocessing(trained, harness_cli):
    import onnxruntime as ort

    root, data, ckpt = trained
    onnx_path, pt2_path = root / "export" / "model.onnx", root / "export" / "model.pt2"
    code, out, err = harness_cli(["export", str(ckpt), "--onnx", str(onnx_path), "--torch-export", str(pt2_path)])
    assert code == 0, err
    meta = json.loads((root / "export" / "model.onnx.json").read_text())
    pre = meta["preprocessing"]
    assert pre["center_crop"] == 16 and pre["mean"] == [0.5, 0.5, 0.5] and pre["interpolation"] == "bicubic"
    assert meta["format"] == "onnx" and meta["check"]["max_abs_diff"] <= meta["check"]["tolerance"] == 1e-4
    assert "max abs difference to PyTorch" in out

    model, config = load_model(ckpt)
    files = sorted(data.glob("*/*.png"))[:7]
    t = eval_transform(16, model.mean, model.std, crop_pct=pre["crop_pct"])
    with torch.no_grad():
        expected = model(torch.stack([t(Image.open(f).convert("RGB")) for f in files])).embeddings.numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batch = np.stack([_preprocess_as_recorded(f, pre) for f in files])
    for part in (batch[:1], batch):  # dynamic batch: 1 and 7
        got = session.run(None, {"images": part})[0]
        assert got.shape == (len(part), 16)
        assert np.abs(got - expected[:len(part)]).max() <= 1e-4
    program = torch.export.load(str(pt2_path)).module()
    assert np.abs(program(torch.from_numpy(batch)).detach().numpy() - expected).max() <= 1e-4


def test_export_needs_a_target_and_a_checkpoint(tmp_path, trained, harness_cli):
    code, _, err = harness_cli(["export", str(trained[2])])
    assert code == 2 and "give --onnx FILE" in err and len(err.strip().splitlines()) == 1
    code, _, err = harness_cli(["export", str(tmp_path / "nope.pt"), "--onnx", str(tmp_path / "m.onnx")])
    assert code == 2 and "checkpoint not found" in err


def test_index_build_and_query_exact(trained, harness_cli):
    root, data, ckpt = trained
    out_dir = root / "index-exact"
    code, out, err = harness_cli(["index", "build", str(ckpt), "--out", str(out_dir)])
    assert code == 0, err
    meta = json.loads((out_dir / "meta.json").read_text())
    gallery = read_dataset("folder", data).test.query
    assert meta["kind"] == "exact" and meta["items"] == len(gallery) and "recall_vs_exact" not in meta
    some = [gallery.paths[0], gallery.paths[7]]
    code, out, err = harness_cli(["index", "query", str(out_dir), *some, "-k", "3", "--json"])
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["query"], r["rank"]) for r in rows] == [(q, k) for q in some for k in (1, 2, 3)]
    for r in rows:
        if r["rank"] == 1:  # an indexed image finds itself first, with cosine 1
            assert r["path"] == r["query"] and r["score"] == pytest.approx(1.0, abs=1e-4)
    assert rows[1]["score"] >= rows[2]["score"]
    code, out, err = harness_cli(["index", "query", str(out_dir), some[0], "-k", "2"])
    assert code == 0 and "score" in out and "rank" in out


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_states_recall_against_exact(trained, kind, harness_cli):
    root, data, ckpt = trained
    out_dir = root / f"index-{kind}"
    code, out, err = harness_cli(["index", "build", str(ckpt), "--out", str(out_dir), "--kind", kind,
                                  "--split", "train"])
    assert code == 0, err
    rec = json.loads((out_dir / "meta.json").read_text())["recall_vs_exact"]
    # a tiny gallery: the approximate search visits everything, so it is exact
    assert rec["top1_agreement"] == 1.0 and rec["recall@1_index"] == rec["recall@1_exact"]
    assert "of the exact top-" in out
    code, out, err = harness_cli(["index", "query", str(out_dir), str(sorted(data.glob("*/*.png"))[0])])
    assert code == 0 and "score" in out


def test_recall_against_exact_sees_a_coarse_ivf():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.arange(4000) % 400
    coarse = create_index(x, IndexParams("ivf", nlist=64, nprobe=1))
    full = create_index(x, IndexParams("ivf", nlist=64, nprobe=64))
    rc, rf = recall_against_exact(coarse, x, labels), recall_against_exact(full, x, labels)
    assert rc["neighbour_recall@10"] < 0.8 and rc["top1_agreement"] < 0.9
    assert rf["neighbour_recall@10"] == pytest.approx(1.0) and rf["top1_agreement"] == 1.0


def test_index_errors_are_one_line(tmp_path, trained, harness_cli):
    code, _, err = harness_cli(["index", "query", str(tmp_path), str(tmp_path / "x.png")])
    assert code == 2 and "not an index folder" in err
    code, _, err = harness_cli(["index", "build", str(trained[2]), "--out", str(tmp_path / "i"), "--kind", "lsh"])
    assert code == 2 and "--kind lsh" in err
    (tmp_path / "bad.png").write_bytes(b"not an image")
    code, _, err = harness_cli(["index", "query", str(trained[0] / "index-exact"), str(tmp_path / "bad.png")])
    assert code == 2 and "cannot read query image" in err


def test_pick_queries_worst_then_typical():
    # 5 tight classes of 4 in 8-d; one image of class 0 planted on class 1's centre
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:5]
    labels = np.repeat(np.arange(5), 4)
    emb = centres[labels] + 0.05 * rng.standard_normal((20, 8))
    emb[0] = centres[1] + 0.01 * rng.standard_normal(8)
    nb = nearest_neighbours(emb, labels, k=3)
    picks = pick_queries(nb, n_worst=1, n_typical=2)
    assert [p.kind for p in picks] == ["worst", "typical", "typical"]
    assert picks[0].row == 0 and picks[0].margin > 0.5  # confidently wrong
    assert nb.gallery_labels[nb.ids[0, 0]] == 1
    assert all(nb.gallery_labels[nb.ids[p.row, 0]] == labels[p.row] for p in picks[1:])
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    assert math.isclose(nb.best_positive_sim[0], float((e[1:4] @ e[0]).max()), abs_tol=1e-5)


def test_neighbours_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    q, g = rng.standard_normal((5, 4)), rng.standard_normal((9, 4))
    nb = nearest_neighbours(q, np.arange(5) % 2, g, np.arange(9) % 3, k=4, gallery_positions=np.arange(9) + 10)
    back = Neighbours.load(nb.save(tmp_path / "r.npz"))
    assert not back.one_set and np.array_equal(back.ids, nb.ids) and np.array_equal(back.gallery_positions, nb.gallery_positions)
    assert np.isneginf(back.best_positive_sim[np.arange(5) % 2 == 2]).all()


def test_eval_show_writes_the_picture(trained, harness_cli):
    root, data, ckpt = trained
    out_dir = root / "show"
    code, out, err = harness_cli(["eval", str(ckpt), "--show", "2", "--show-dir", str(out_dir)])
    assert code == 0, err
    pngs = sorted((out_dir / "retrievals").glob("*.png"))
    assert [p.name.split("-")[1] for p in pngs].count("worst.png") == 2 and len(pngs) == 5
    md = (out_dir / "retrievals.md").read_text()
    html = (out_dir / "retrievals.html").read_text()
    assert all(f"retrievals/{p.name}" in md for p in pngs) and html.count("data:image/png;base64,") == 5
    strip = Image.open(pngs[0])
    assert strip.width > 4 * strip.height  # the query and its 5 retrieved images in a row


@pytest.fixture(scope="module")
def fuzz_index(trained, tmp_path_factory):
    root, data, ckpt = trained
    out_dir = tmp_path_factory.mktemp("fuzz") / "index"
    from harness.serving.index import IndexParams, build_index

    build_index(ckpt, out_dir, "folder", str(data), "test", IndexParams("exact"))
    return out_dir, sorted(data.glob("*/*.png"))[0].read_bytes()


@pytest.mark.fuzz
def test_index_query_on_non_images_answers_or_says_one_line(fuzz_index, harness_cli, tmp_path_factory):
    # Hypothesis (derandomized, tests/fixtures/fuzzing.py): random bytes, mutated PNGs,
    # text, empty files; each queried through `harness index query` in-process.
    from hypothesis import given
    from hypothesis import strategies as st

    from fixtures.fuzzing import file_contents, fuzz_settings

    out_dir, png = fuzz_index

    @fuzz_settings(15)
    @given(content=st.one_of(file_contents(png), st.just(b""), st.text(max_size=50).map(str.encode)),
           suffix=st.sampled_from([".png", ".jpg", ".txt", ""]))
    def run(content, suffix):
        query = tmp_path_factory.mktemp("q") / f"query{suffix}"
        query.write_bytes(content)
        code, out, err = harness_cli(["index", "query", str(out_dir), str(query), "-k", "2"])
        assert "Traceback" not in err
        if code != 0:
            assert code == 2 and len(err.strip().splitlines()) == 1, err
        else:
            assert "score" in out

    run()
