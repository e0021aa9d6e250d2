"""DistributedDataParallel training: 2 gloo processes on loopback equal one process on the global batch.

Why they must agree: with dropout 0, equal-size shards and a loss that is a
mean over each shard, DDP's average of the two shard gradients is exactly the
gradient of the mean loss over the concatenated batch, so AdamW takes the same
steps; the only differences are float summation order (tolerance 1e-5).
"""

import os
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from attnrec.training import TrainConfig, train

WORLD = 2
BS = 8  # per-rank batch; the single-process reference uses 2 * BS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_problem(sparse_grad: bool = False):
    """A small causal-attention net on fixed-length sequences (every batch has B*T targets).

    ``sparse_grad``: the item table gets row-sparse gradients (SparseAdam); the
    loss gathers every item row, so each step touches all rows and the updates
    must equal dense AdamW's (weight decay 0).
    """
    from attnrec.models.attention import AttentionConfig
    from attnrec.models.sasrec_net import SASRecConfig, SASRecNet

    torch.manual_seed(0)
    net = SASRecNet(SASRecConfig(30, max_len=6, n_layers=1, sparse_grad=sparse_grad,
                                 attention=AttentionConfig(d_model=16, n_heads=2, dropout=0.0)))
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(1, 31, (64, 7), generator=g)

    def batches(epoch, rng):
        perm = rng.permutation(len(seqs))
        for i in range(0, len(perm), BS):
            s = seqs[perm[i : i + BS]]
            yield s[:, :-1], s[:, 1:]

    def loss_fn(module, batch):
        x, y = batch
        h = module(x)  # through the DDP wrapper when distributed
        logits = h @ net.output_rows(torch.arange(1, 31)).T
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1) - 1)

    return net, batches, loss_fn


def config(**kw):
    return TrainConfig(**{"epochs": 3, "lr": 1e-2, "progress": False, "patience": None, **kw})


def reference_params():
    net, batches, loss_fn = make_problem()

    def pairs(epoch, rng):  # one step over the two batches the two ranks take
        it = batches(epoch, rng)
        for a, b in zip(it, it):
            yield torch.cat([a[0], b[0]]), torch.cat([a[1], b[1]])

    train(net, pairs, loss_fn, config())
    return {k: v.clone() for k, v in net.state_dict().items()}


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from attnrec import distributed

    assert distributed.init_from_env("gloo")
    try:
        net, batches, loss_fn = make_problem()
        train(net, batches, loss_fn, config())
        result = {"ddp": net.state_dict()}
        # row-sparse item-table gradients: all-reduced sparsely by DDP, updated by SparseAdam
        net3, batches3, loss_fn3 = make_problem(sparse_grad=True)
        train(net3, batches3, loss_fn3, config())
        assert net3.item_emb.weight.grad is None or net3.item_emb.weight.grad.is_sparse
        result["sparse"] = net3.state_dict()
        # a whole SASRec fit: rank 0 evaluates, all ranks stop together, only rank 0 checkpoints
        from attnrec.data.preprocess import build_sequences
        from attnrec.data.splits import leave_one_out
        from attnrec.data.synthetic import generate
        from attnrec.evaluation import validation_metric
        from attnrec.models import SASRec

        data, _ = build_sequences(generate(n_users=80, n_items=30, seed=3).log)
        split = leave_one_out(data)
        ck = os.path.join(out, f"ck{rank}")
        m = SASRec(d_model=16, n_layers=1, n_heads=1, max_len=10, epochs=3, patience=1, eval_every=1, batch_size=16,
                   dropout=0.0, num_threads=1, checkpoint_dir=ck).fit(split.train, split.valid, validation_metric())
        result["sasrec"] = m.net_.state_dict()
        result["history"] = [(h["epoch"], h.get("NDCG@10")) for h in m.history_]
        result["wrote_checkpoint"] = os.path.exists(os.path.join(ck, "checkpoint.pt"))
        # resume: rank 1 has no checkpoint file of its own; rank 0's is broadcast to it
        m2 = SASRec(**{**m.get_params(), "resume": True}).fit(split.train, split.valid, validation_metric())
        result["resumed"] = m2.net_.state_dict()
        result["resumed_history"] = [(h["epoch"], h.get("NDCG@10")) for h in m2.history_]
        torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


@pytest.mark.timeout(120)
def test_two_processes_match_one_process_on_the_global_batch(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    ref = reference_params()
    initial = make_problem()[0].state_dict()
    d = 16
    def comparable(k, t):
        # drop the key bias: its true gradient is 0 (softmax ignores a per-query constant),
        # so Adam turns float noise into full-size steps on any run, one process or two
        return torch.cat([t[:d], t[2 * d :]]) if k.endswith("in_proj.bias") else t

    for k, v in ref.items():
        assert not torch.equal(v, initial[k])  # training moved the weights
        for got in (r0["ddp"][k], r1["ddp"][k]):
            torch.testing.assert_close(comparable(k, got), comparable(k, v), atol=1e-5, rtol=0)
        for got in (r0["sparse"][k], r1["sparse"][k]):
            # SparseAdam folds the bias corrections into the step size in another order than
            # AdamW: float differences reach ~1e-5 after 24 steps, so a looser bound here
            torch.testing.assert_close(comparable(k, got), comparable(k, v), atol=5e-5, rtol=0)
    for k, v in r0["sasrec"].items():  # replicas stay identical
        torch.testing.assert_close(r1["sasrec"][k], v, atol=0, rtol=0)
    assert r0["history"] == r1["history"] and all(h[1] is not None for h in r0["history"])
    assert r0["wrote_checkpoint"] and not r1["wrote_checkpoint"]
    for r in (r0, r1):  # the finished run resumes as finished on every rank, best weights kept
        assert r["resumed_history"] == r0["history"]
        for k, v in r0["sasrec"].items():
            torch.testing.assert_close(r["resumed"][k], v, atol=0, rtol=0)


def test_shard_takes_every_world_th_batch_and_drops_the_incomplete_group():
    from attnrec.distributed import shard

    assert list(shard(range(7), 0, 2)) == [0, 2, 4]
    assert list(shard(range(7), 1, 2)) == [1, 3, 5]
    assert list(shard(range(3), 0, 1)) == [0, 1, 2]
    assert np.array_equal(sorted(list(shard(range(9), 0, 3)) + list(shard(range(9), 1, 3)) + list(shard(range(9), 2, 3))),
                          range(9))
