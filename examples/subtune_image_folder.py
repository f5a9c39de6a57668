"""SubTune one task on your own image folder and save it as a task file.

    python examples/subtune_image_folder.py PHOTOS_DIR --name flowers --units layer4 --out tasks

PHOTOS_DIR holds one folder per class (``PHOTOS_DIR/<class>/*.jpg``) or ``train/`` and ``val/``
folders of those. Weights default to timm's hub; pass ``--weights offline`` with
``--model tf_efficientnet_lite0`` to stay offline, or ``--weights PATH`` for your own.
"""

from __future__ import annotations

import argparse

from subtune_edge import create_backbone, save_task
from subtune_edge.backbone import model_args_for_input
from subtune_edge.data import DataSpec, load_data
from subtune_edge.train import TrainConfig, train


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder")
    p.add_argument("--name", required=True)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--weights", default="timm")
    p.add_argument("--units", default="layer4", help="units to tune, e.g. layer4 or layer4.1,layer4.2; none = probe")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="tasks")
    args = p.parse_args(argv)

    size = (args.input_size, args.input_size)
    backbone = create_backbone(args.model, args.weights, **model_args_for_input(args.model, size))
    data = load_data(DataSpec(args.folder, size), backbone.data_config)
    units = backbone.parse_units(args.units)
    result = train(backbone, data, units, TrainConfig(epochs=args.epochs, device=args.device), name=args.name)
    path = save_task(result.task, f"{args.out}/{args.name}")
    print(f"{args.name}: tuned {', '.join(units) or 'nothing (linear probe)'}; "
          f"val accuracy {100 * result.accuracy:.1f}%; saved {path}")
    return str(path)


if __name__ == "__main__":
    main()
