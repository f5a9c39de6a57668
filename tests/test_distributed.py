"""One SubTuning run over 2 processes (DDP, gloo, CPU) trains the same weights as 1 process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from subtune_edge.backbone import BackboneSpec, model_args_for_input
from subtune_edge.data import DataSpec
from subtune_edge.errors import SubtuneError
from subtune_edge.task import load_task
from subtune_edge.train import TrainConfig, get_backbone, get_data, split_batches, train
from subtune_edge.train.ddp import DDPWorld, DistContext, global_batches, shard

pytestmark = pytest.mark.slow

MODEL = "vit_tiny_patch16_224"   # LayerNorm only: per-process slices give exactly the global batch's gradient
SIZE = (32, 32)
UNITS = ["blocks.10", "blocks.11"]
CONFIG = TrainConfig(epochs=2, batch_size=16, device="cpu")


def _spec() -> BackboneSpec:
    return BackboneSpec(MODEL, "random", model_args_for_input(MODEL, SIZE))


def _data_spec() -> DataSpec:
    return DataSpec("digits:parity", SIZE, train_samples=48, val_samples=40)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        backbone = get_backbone(_spec())
        data = get_data(_data_spec(), backbone.data_config)
        ctx = DistContext(rank, world, rank, "gloo")
        result = train(backbone, data, UNITS, CONFIG, name="ddp", world=DDPWorld(ctx))
        # what DDP wraps: the trainable part only
        wrapped = {id(p) for p in DDPWorld(ctx, False).wrap_branch(result.model).parameters()}
        trainable = {id(p) for m in result.model.trainable_modules().values() for p in m.parameters()}
        step_info = {"wrapped_equals_trainable": wrapped == trainable,
                     "frozen_in_eval": not any(u.training for i, u in enumerate(result.model.units)
                                               if result.model.unit_names[i] not in UNITS)}
        torch.save({"tensors": result.task.tensors, "record": json.dumps(result.record.to_json()), "info": step_info},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_trains_the_same_weights_as_one_process(tmp_path):
    backbone = get_backbone(_spec())
    data = get_data(_data_spec(), backbone.data_config)
    single = train(backbone, data, UNITS, CONFIG, name="one")
    tmp_mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    ref = single.task.tensors
    assert set(ranks[0]["tensors"]) == set(ref) and any(k.startswith("blocks.10.") for k in ref)
    moved = max(float((ranks[0]["tensors"][k] - backbone.units[k.split(".")[0] + "." + k.split(".")[1]]
                       .state_dict()[".".join(k.split(".")[2:])]).abs().max())
                for k in ref if not k.startswith("head"))
    assert moved > 1e-4  # the tuned units really trained
    for k, v in ref.items():
        torch.testing.assert_close(ranks[0]["tensors"][k], v, atol=2e-5, rtol=1e-4, msg=k)
        torch.testing.assert_close(ranks[1]["tensors"][k], ranks[0]["tensors"][k], atol=0, rtol=0)
    rec = json.loads(ranks[0]["record"])
    assert rec["distributed"]["world_size"] == 2 and rec["distributed"]["global_batch"] == 16
    assert rec["val_accuracy"] == pytest.approx(single.record.val_accuracy, abs=1 / 40 + 1e-9)
    assert [h["train_loss"] for h in rec["history"]] == pytest.approx(
        [h["train_loss"] for h in single.record.history], rel=1e-4)
    assert ranks[0]["info"] == {"wrapped_equals_trainable": True, "frozen_in_eval": True}


def test_global_batches_and_shards():
    gen = torch.Generator().manual_seed(0)
    one = split_batches(48, 16, torch.Generator().manual_seed(0))
    two = global_batches(48, 16, gen, 2)
    assert [b.tolist() for b in one] == [b.tolist() for b in two]
    parts = [shard(two[0], DistContext(r, 2)) for r in range(2)]
    assert torch.cat(parts).tolist() == two[0].tolist() and [len(p) for p in parts] == [8, 8]
    assert [len(b) for b in global_batches(50, 16, None, 2)] == [16, 16, 18]  # 2 left: 1 per process, merged
    for n, batches in ((33, split_batches(33, 16, torch.Generator().manual_seed(1))),
                       (50, global_batches(50, 16, torch.Generator().manual_seed(1), 2))):
        assert sorted(torch.cat(batches).tolist()) == list(range(n))  # every sample once per epoch
    assert [len(b) for b in global_batches(52, 16, None, 2)] == [16, 16, 16, 4]


def test_refusals():
    backbone = get_backbone(_spec())
    data = get_data(_data_spec(), backbone.data_config)
    with pytest.raises(SubtuneError, match="fewer than 2 samples per process"):
        train(backbone, data, UNITS, TrainConfig(batch_size=2, device="cpu"), world=DDPWorld(DistContext(0, 2)))
    with pytest.raises(SubtuneError, match="CUDA only"):
        train(backbone, data, UNITS, CONFIG, world=DDPWorld(DistContext(0, 2), sync_bn=True))


@pytest.mark.slow
def test_torchrun_launch_line_writes_the_task(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not on this interpreter's bin folder")
    cmd = [str(torchrun), "--nproc_per_node=2", "--master_port", str(_free_port()), "-m", "subtune_edge.distributed",
           MODEL, "--weights", "random", "--data", "digits:parity", "--input-size", "32", "--blocks", "blocks.11",
           "--name", "par", "--task-dir", str(tmp_path), "--epochs", "1", "--batch-size", "16",
           "--train-samples", "32", "--val-samples", "32", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "on 2 processes" in res.stdout
    task = load_task(tmp_path / "par.safetensors")
    assert task.tuned_units == ["blocks.11"] and task.training["distributed"]["world_size"] == 2
