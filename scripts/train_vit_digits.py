"""Train the small digits ViT (`vit-tiny-digits`) or its routing fine-tune, and export it in zoo layout.

    python scripts/train_vit_digits.py --out runs/vit-digits --export weights/vit-tiny-digits
    python scripts/train_vit_digits.py --method routing --init weights/vit-tiny-digits --epochs 30 --lr 5e-4 \\
        --warmup-epochs 2 --distill 1.0 --out runs/vit-digits-routing --export weights/vit-tiny-digits-routing
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/train_vit_digits.py ...  # 2 processes

Data: zoo.data digits (first 1,500 train; the last 297 held out, never seen here but for the final measurement),
upsampled to 32x32 (vit_accel.evaluate.digits), random affine augmentation. AdamW with warmup + cosine, label
smoothing; Accelerate checkpoints (``save_state``) under ``--out/checkpoints`` once per epoch (``--resume``).
With ``--method routing`` the model gets token routers (vit_accel.routing) and the loss adds
``--budget-weight`` x the compute-budget loss and ``--distill`` x the KL to the frozen ``--init`` model; the
routers' Gumbel noise falls linearly from 1 to 0 over the first ``--anneal`` share of the steps.
The export's card carries the held-out top-1 (and, for routing, the executed MACs) measured at the end.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed

import zoo
from vit_accel import AcceleratedViT, AcceleratedViTConfig, routing
from vit_accel.evaluate import digits, predict, top1
from vit_accel.trained import DIGITS_VIT, ROUTING_KWARGS
from zoo.training import StepCounter, cosine_factor, resume_latest, save_complete_state


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random affine per image: rotation +-12 degrees, scale 0.9-1.1, shift +-3 px (of 32); zero fill."""
    n = images.shape[0]
    u = torch.rand(n, 4, generator=generator) * 2 - 1
    angle, scale, shift = u[:, 0] * math.radians(12), 1 + 0.1 * u[:, 1], u[:, 2:] * (3 / 16)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def build(args) -> tuple[AcceleratedViT, AcceleratedViT | None]:
    """The model to train and (for --distill) the frozen teacher."""
    method_kwargs = dict(ROUTING_KWARGS, target=args.target) if args.method == "routing" else {}
    model = AcceleratedViT(AcceleratedViTConfig(**DIGITS_VIT, method=args.method, method_kwargs=method_kwargs))
    teacher = None
    if args.init:
        base = zoo.load(f"local-dir:{args.init}")
        missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
        if unexpected or any(".router." not in key for key in missing):
            raise ValueError(f"{args.init} does not fit: missing {missing}, unexpected {unexpected}")
        teacher = base.eval().requires_grad_(False) if args.distill > 0 else None
    elif args.distill > 0:
        raise ValueError("--distill needs --init (the teacher)")
    return model, teacher


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

    accelerator = Accelerator(project_config=ProjectConfiguration(
        project_dir=args.out, automatic_checkpoint_naming=True, total_limit=2))
    set_seed(args.seed, device_specific=True)
    images, labels = digits("train")
    model, teacher = build(args)
    steps_per_epoch = len(images) // (args.batch_size * accelerator.num_processes)
    total = args.epochs * steps_per_epoch
    counter = StepCounter()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda _: cosine_factor(counter.value, args.warmup_epochs * steps_per_epoch, total))
    model, opt, sched = accelerator.prepare(model, opt, sched)
    accelerator.register_for_checkpointing(counter)
    if args.resume and resume_latest(accelerator, args.out):
        sched.step()  # learning rate from the restored step
    device = accelerator.device
    if teacher is not None:
        teacher.to(device)
    inner = accelerator.unwrap_model(model)
    while counter.value < total:
        epoch = counter.value // steps_per_epoch
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)  # same order on every process; shards differ
        order = torch.randperm(len(images), generator=g)[accelerator.process_index::accelerator.num_processes]
        stats = []
        for step in range(counter.value % steps_per_epoch, steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x, y = augment(images[idx], g).to(device), labels[idx].to(device)
            model.train()
            if args.method == "routing":
                routing.set_noise(inner.vit, max(0.0, 1 - counter.value / (args.anneal * total)))
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            if args.method == "routing":
                budget = routing.budget_loss(inner.vit)
                loss = loss + args.budget_weight * budget
                stats.append(routing.stats(inner.vit).full_fraction.mean().item())
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x).log_softmax(-1)
                loss = loss + args.distill * F.kl_div(logits.log_softmax(-1), target, log_target=True,
                                                      reduction="batchmean")
            opt.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            counter.value += 1
            sched.step()
        save_complete_state(accelerator, counter.value)
        if accelerator.is_main_process and (epoch % 5 == 4 or counter.value >= total):
            extra = f" full-path fraction {sum(stats) / len(stats):.3f}" if stats else ""
            print(f"epoch {epoch + 1}/{args.epochs}: loss {loss.item():.4f}{extra}", flush=True)

    accelerator.wait_for_everyone()
    if accelerator.is_main_process and args.export:
        export(inner.eval(), args)


def export(model: AcceleratedViT, args) -> None:
    """Measure on the held-out digits and write the zoo folder with the numbers in its card."""
    images, labels = digits("heldout")
    model.cpu()
    acc = top1(predict(model, images), labels)
    name = args.name or ("vit-tiny-digits-routing" if args.method == "routing" else "vit-tiny-digits")
    columns, row = ["model", "held-out top-1"], [name, f"{100 * acc:.2f} %"]
    description = f"Held-out digits: the last {len(labels)} images of scikit-learn digits (zoo.data.digits)."
    if args.method == "routing":
        with torch.inference_mode():  # all held-out images in one batch: stats of every image
            model(images)
        st = routing.stats(model.vit)
        full = routing.block_macs(model.vit.blocks[0], torch.tensor(65)).item() * len(model.vit.blocks)
        columns += ["block MACs / image (mean)", "vs. all tokens", "full-path fraction"]
        row += [f"{st.macs.float().mean().item() / 1e6:.2f} M", f"{st.macs.float().mean().item() / full:.3f}",
                f"{st.full_fraction.mean().item():.3f}"]
        description += (" MACs: the transformer blocks and routers, per image on its own routed tokens (the patch "
                        f"embedding and head add a constant); all tokens: {full / 1e6:.2f} M.")
    model.card_info["spec"] = zoo.model_info(name)
    model.card_info["metrics"] = {"description": description, "columns": columns, "rows": [row]}
    Path(args.export).mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.export)
    print(f"exported to {args.export}: {dict(zip(columns, row))}")


if __name__ == "__main__":
    main()
