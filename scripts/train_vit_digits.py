"""Train the small digits ViT (`vit-tiny-digits`) or its routing fine-tune, and export it in zoo layout.

    python scripts/train_vit_digits.py --out runs/vit-digits --export weights/vit-tiny-digits
    python scripts/train_vit_digits.py --method routing --init weights/vit-tiny-digits --epochs 30 --lr 5e-4 \\
        --warmup-epochs 2 --distill 1.0 --out runs/vit-digits-routing --export weights/vit-tiny-digits-routing
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train_vit_digits.py ...  # 2 processes

The recipe is vit_accel/train.py, on the zoo's one training loop (zoo.training.train_loop). Data: zoo.data
digits (train 0-1,299; validation and test are never trained on), upsampled to
32x32 (vit_accel.evaluate.digits), random affine augmentation. AdamW with warmup + cosine, label smoothing;
complete Accelerate checkpoints under ``--out/checkpoints`` once per epoch (``--resume``). With ``--method
routing`` the model gets token routers (vit_accel.routing) and the loss adds ``--budget-weight`` x the
compute-budget loss and ``--distill`` x the KL to the frozen ``--init`` model; the routers' Gumbel noise falls
linearly from 1 to 0 over the first ``--anneal`` share of the steps.
The export's card carries the held-out top-1 (and, for routing, the executed MACs) measured at the end;
`zoo eval vit-tiny-digits` measures the token-reduction methods on it.
"""

from __future__ import annotations

import argparse

import torch

from vit_accel.train import DigitsTrainConfig, export, train
from vit_accel.trained import ROUTING_KWARGS
from zoo.training import config_from_arguments


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/vit-digits", help="run folder (Accelerate checkpoints)")
    parser.add_argument("--export", default=None, help="zoo-layout folder for the final model")
    parser.add_argument("--name", default=None, help="registry entry named in the card (default: from --method)")
    parser.add_argument("--method", choices=["routing"], default=None, help="train with token routing")
    parser.add_argument("--init", default=None, help="zoo folder to start from (routing fine-tune)")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup-epochs", type=int, default=5)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--target", type=float, default=ROUTING_KWARGS["target"], help="routing budget")
    parser.add_argument("--budget-weight", type=float, default=4.0, help="weight of routing.budget_loss")
    parser.add_argument("--anneal", type=float, default=0.7,
                        help="routing: share of training over which the Gumbel noise falls from 1 to 0")
    parser.add_argument("--distill", type=float, default=0.0, help="weight of the KL to the --init model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads per process")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.distill > 0 and not args.init:
        parser.error("--distill needs --init (the teacher)")
    tc = config_from_arguments(DigitsTrainConfig, args)
    model = train(tc, args.out, resume=args.resume)
    from accelerate import PartialState

    if PartialState().is_main_process and args.export:
        name = args.name or ("vit-tiny-digits-routing" if args.method == "routing" else "vit-tiny-digits")
        table = export(model, name, args.export)
        print(f"exported to {args.export}: {dict(zip(table['columns'], table['rows'][0]))}")


if __name__ == "__main__":
    main()
