"""The torchrun entry point: one SubTuning run on several GPUs (or CPU processes).

The DDP training itself is :func:`subtune_edge.train.train` with a
:class:`~subtune_edge.train.ddp.DDPWorld` (see :mod:`subtune_edge.train.ddp` for how batches are
split and gradients averaged); this module is the command around it, with the same training
options as ``subtune-edge tune`` (:func:`~subtune_edge.commands._options.training_options`).

Launch (one process per GPU; rank 0 writes the task file)::

    torchrun --nproc_per_node=4 -m subtune_edge.distributed resnet50 --data ./flowers \\
        --blocks layer4 --name flowers --epochs 10 --batch-size 256
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import torch.distributed as dist

from .commands._options import task_dir_option, task_name_option, training_options, training_specs
from .errors import SubtuneError
from .progress import Event
from .task import save_task
from .train.ddp import DDPWorld, init_from_env
from .train.loop import train
from .train.runs import get_backbone, get_data


def _render(exc: SubtuneError, command: click.Command) -> str:
    """The error with a library parameter shown as this command's flag."""
    for param in command.params:
        if param.name == exc.param and isinstance(param, click.Option):
            return exc.render(next((o for o in param.opts if o.startswith("--")), param.opts[0]))
    return str(exc)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("model")
@click.option("--blocks", required=True, metavar="none|all|UNITS",
              help="Units to tune (comma-separated names / prefixes); none = linear probe, all = full finetuning.")
@task_name_option("Task name; rank 0 writes TASK_DIR/NAME.safetensors.")
@click.option("--siamese", is_flag=True, help="Head on concat(tuned features, frozen features).")
@training_options
@task_dir_option
@click.option("--backend", type=click.Choice(["nccl", "gloo"]), default=None,
              help="Default: nccl with CUDA, gloo otherwise.")
@click.option("--sync-bn/--no-sync-bn", default=None,
              help="SyncBatchNorm in the tuned units (default: on with CUDA; CUDA only).")
@click.pass_context
def command(click_ctx: click.Context, model, blocks, name, siamese, task_dir, backend, sync_bn, **opts):
    """One SubTuning run of MODEL on several GPUs / processes; launch with torchrun.

    \b
    Example:
      torchrun --nproc_per_node=2 -m subtune_edge.distributed resnet50 --data ./flowers \\
          --blocks layer4 --name flowers --epochs 10
    """
    ctx = None
    try:
        if blocks.strip() == "auto":
            raise SubtuneError("--blocks auto is a search of many runs: run it with `subtune-edge tune --blocks "
                               "auto --executor ray`, then train the chosen units here")
        ctx = init_from_env(backend)
        spec, data_spec, config = training_specs(model, **opts)
        backbone = get_backbone(spec)
        data = get_data(data_spec, backbone.data_config)
        units = backbone.parse_units(blocks)

        def say(event: Event) -> None:
            if event.stage == "train" and event.data.get("event") == "epoch":
                d = event.data
                click.echo(f"epoch {d['epoch']}/{d['epochs']}: val acc {100 * d['val_accuracy']:.2f}% "
                           f"({d['seconds']:.1f} s)")

        result = train(backbone, data, units, config, siamese=siamese, name=name,
                       progress=say if ctx.is_main else None, world=DDPWorld(ctx, sync_bn))
        if ctx.is_main:
            path = save_task(result.task, Path(task_dir) / name)
            click.echo(f"task '{name}' -> {path}: {result.record.mode}, val acc "
                       f"{100 * result.accuracy:.2f}% on {ctx.world_size} processes, "
                       f"{result.record.seconds:.1f} s")
        dist.barrier()
    except SubtuneError as exc:
        if ctx is None or ctx.is_main:
            click.secho(f"error: {_render(exc, click_ctx.command)}", fg="red", err=True)
        sys.exit(2)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Run the torchrun command (``argv``: default the process's arguments)."""
    command(args=argv)


if __name__ == "__main__":
    main()
