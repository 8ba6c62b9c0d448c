"""Training on several processes (torch.distributed, gloo on CPU): one epoch on
two ranks ends with the weights of one process on the same global batches;
a killed DDP run resumes exactly; the issue's torchrun command works and
leaves a checkpoint a single process loads."""
import json
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from showtell.config import DataConfig, ModelConfig, TrainConfig
from showtell.datasets import ImageCaptions
from showtell.distributed import Distributed, setup_distributed, teardown_distributed
from showtell.features import FeatureSet, NpyRows
from showtell.metrics import CiderD
from showtell.model import CaptionModel
from showtell.text import Vocabulary, tokenize
from showtell import training
from showtell.training import BatchSource, make_objective, make_optimisation, train_step
from synthetic import make_karpathy_set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDS = ["a", "dog", "cat", "runs", "sits", "on", "the", "grass", "beach", "red"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, *args) -> None:
    """Two processes of ``worker(rank, 2, port, *args)`` on a free port. A port
    found free can be taken again before rank 0's store binds it; a run that
    failed at that rendezvous (before any work) is started again on another."""
    for attempt in range(3):
        try:
            mp.spawn(worker, args=(2, _free_port(), *args), nprocs=2)
            return
        except mp.ProcessRaisedException as e:
            if "_create_c10d_store" not in str(e) or attempt == 2:
                raise


def _environment(rank: int, world: int, port: int) -> None:
    """What torchrun gives each process: the group's address, size and rank."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)


def _join(rank: int, world: int, port: int) -> Distributed:
    _environment(rank, world, port)
    return setup_distributed(torch.device("cpu"))[0]


def _write_features(folder, n: int = 24):
    """Cached-feature files and items of a made-up split (resnet18's shapes)."""
    rng = np.random.default_rng(0)
    np.save(os.path.join(folder, "pooled.npy"), rng.standard_normal((n, 512)).astype(np.float32))
    np.save(os.path.join(folder, "spatial.npy"), rng.standard_normal((n, 49, 512)).astype(np.float16))
    return [ImageCaptions(f"img{i}", f"/none/{i}.jpg",
                          tuple(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(5)))
            for i in range(n)]


def _one_epoch(folder, items, objective: str, dist: Distributed) -> dict:
    """One epoch of train_step over the cached features, as train() runs it."""
    fs = FeatureSet(items, NpyRows(os.path.join(folder, "pooled.npy")),
                    NpyRows(os.path.join(folder, "spatial.npy")), [])
    vocab = Vocabulary.build((tokenize(c) for it in items for c in it.captions), 1)
    torch.manual_seed(0)
    model = CaptionModel.build(ModelConfig(encoder="resnet18", decoder="show_attend_tell", embed_dim=16,
                                           hidden_dim=16, attention_dim=16, dropout=0.0), vocab, encoder_weights=None)
    dist.sync_parameters(model)
    # 17 does not divide 120 captions: the last global batch has one row, so rank 1's slice is empty.
    cfg = TrainConfig(batch_size=17 if objective == "xe" else 5, objective=objective, attention_reg=0.5,
                      scst_samples=3, max_decode_len=6)
    source = BatchSource(model, items, fs, per_image=objective == "scst", max_caption_len=12,
                         batch_size=cfg.batch_size, seed=0, device=torch.device("cpu"), dist=dist)
    obj = make_objective(cfg, model, CiderD([[tokenize(c) for c in it.captions] for it in items]))
    opt = make_optimisation(model, cfg, torch.device("cpu"))
    initial = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    model.train()
    losses = [train_step(model, obj, batch, opt, dist) for batch in source.batches(0)]
    return {"decoder": model.decoder.state_dict(), "initial": initial, "losses": losses}


def _epoch_worker(rank, world, port, folder, items, objective, out):
    dist = _join(rank, world, port)
    try:
        torch.save(_one_epoch(folder, items, objective, dist), os.path.join(out, f"{objective}-rank{rank}.pt"))
    finally:
        teardown_distributed(dist)


def test_two_ranks_end_an_epoch_with_the_weights_of_one_process(tmp_path):
    items = _write_features(tmp_path)
    one = _one_epoch(tmp_path, items, "xe", Distributed())
    _spawn(_epoch_worker, str(tmp_path), items, "xe", str(tmp_path))
    ranks = [torch.load(tmp_path / f"xe-rank{r}.pt", weights_only=True) for r in range(2)]
    assert len(one["losses"]) == 8 and one["losses"][-1][1] == 1  # the last global batch holds one caption
    for k, v in one["decoder"].items():
        assert torch.equal(ranks[0]["decoder"][k], ranks[1]["decoder"][k]), k  # the ranks agree exactly
        if k == "att_score.bias":
            # Its true gradient is zero (a softmax ignores a shift of all its inputs),
            # so Adam turns rounding noise of either order of summation into full steps.
            continue
        assert torch.allclose(ranks[0]["decoder"][k], v, rtol=1e-4, atol=1e-5), k
    # Both ranks log the global batch's loss and size, as one process does.
    assert [n for _, n in ranks[0]["losses"]] == [n for _, n in one["losses"]]
    assert np.allclose([x for x, _ in ranks[1]["losses"]], [x for x, _ in one["losses"]], rtol=1e-5)


def test_self_critical_training_on_two_ranks_keeps_them_in_step(tmp_path):
    items = _write_features(tmp_path)
    _spawn(_epoch_worker, str(tmp_path), items, "scst", str(tmp_path))
    ranks = [torch.load(tmp_path / f"scst-rank{r}.pt", weights_only=True) for r in range(2)]
    assert sorted(n for _, n in ranks[0]["losses"]) == [4, 5, 5, 5, 5]  # 24 images in global batches of 5
    for k, v in ranks[0]["decoder"].items():
        assert torch.equal(v, ranks[1]["decoder"][k]), k  # gradients were summed: one model on both ranks
    assert all(torch.isfinite(torch.tensor(x)) for x, _ in ranks[0]["losses"])
    assert any(not torch.equal(v, ranks[0]["initial"][k]) for k, v in ranks[0]["decoder"].items())


def _train_worker(rank, world, port, cfgs, out, resume, snapshots):
    # train() joins the group itself, from the environment. (Joining here
    # first and leaving made the ranks meet twice on one port; once in a
    # fresh clone's run rank 0 waited to bind the port again while rank 1
    # waited for it, for ever.)
    _environment(rank, world, port)
    if snapshots:
        save = training.save_checkpoint

        def save_and_keep(ck, path):  # keep every mid-epoch last.pt, to resume from one later
            save(ck, path)
            t = ck.get("training")
            if t is not None and t["step"]:
                shutil.copy(path, os.path.join(snapshots, f"e{t['epoch']}s{t['step']}.pt"))
        training.save_checkpoint = save_and_keep
    training.train(*cfgs, out, resume=resume, encoder_weights=None, device="cpu", progress=False,
                   log=lambda s: None)


def test_a_ddp_run_resumed_mid_epoch_ends_as_if_never_stopped(tmp_path):
    ann, images = make_karpathy_set(tmp_path / "coco", {"train": 30, "restval": 6, "val": 6})
    cfgs = (ModelConfig(encoder="resnet18", decoder="show_tell", embed_dim=16, hidden_dim=16),
            DataConfig(dataset="karpathy", annotations=ann, image_root=images, min_word_count=1),
            TrainConfig(epochs=2, batch_size=16, checkpoint_every=4, max_decode_len=8, early_stop_patience=100))
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _spawn(_train_worker, cfgs, str(straight), False, str(snaps))
    resumed.mkdir()
    shutil.copy(snaps / "e1s4.pt", resumed / "last.pt")  # as if killed in epoch 2 after step 4
    shutil.copy(straight / "log.jsonl", resumed / "log.jsonl")
    _spawn(_train_worker, cfgs, str(resumed), True, "")
    a = torch.load(straight / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert b["training"]["finished"] and b["training"]["epoch"] == 2
    assert len(a["training"]["rng_ranks"]) == 2
    for k, v in a["decoder"].items():
        assert torch.equal(v, b["decoder"][k]), k
    assert [r["train_loss"] for r in a["training"]["history"]] == [r["train_loss"] for r in b["training"]["history"]]


def test_the_issues_torchrun_command(tmp_path, flickr8k_root):
    """Exactly the command of issue 8 (its paths made absolute), run in a scratch folder."""
    out = tmp_path / "runs" / "ddp"
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", os.path.join(ROOT, "train.py"),
           "--dataset", "flickr8k", "--data-root", flickr8k_root, "--device", "cpu", "--epochs", "1",
           "--max-images", "200", "--out", str(out), "--no-progress"]
    run = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "200 images, 1000 captions per epoch" in run.stdout and "on 2 processes" in run.stdout
    assert run.stdout.count("epoch 1/1") == 1  # rank 0 alone logs
    log = (out / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["epoch"] == 1
    model = CaptionModel.from_checkpoint(str(out / "best.pt"))  # one process loads a DDP checkpoint
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["encoder"] is None and ckpt["data_config"]["max_images"] == 200
    feats = torch.randn(2, 49, 1280) if model.feature_kind == "spatial" else torch.randn(2, 1280)  # the default decoder's
    from showtell.decoding import DecodeOptions
    assert len(model.generate(feats, DecodeOptions(beam_size=1, max_len=5))) == 2
