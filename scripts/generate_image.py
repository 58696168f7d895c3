"""Many samples of a class-conditional image generator, as FID sample sets are made: a folder of PNGs (and
optionally one .npz), sharded across processes, resumable.

    python scripts/generate_image.py llamagen-gpt-tiny-fashion -n 10000 --out samples/ --npz samples.npz
    python scripts/generate_image.py NAME -n 50000 --out samples/ --cfg 2.0 --temperature 1 --top-k 0 --top-p 1
    accelerate launch scripts/generate_image.py NAME -n 50000 --out samples/        # one share per GPU
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/generate_image.py NAME -n 100 --out s/

The machinery is `zoo.sample_sets` (shared with scripts/generate_audio.py). Item ``i`` (0 <= i < n) is class
``i % num_classes`` (or ``--class``) drawn with seed ``--seed + i`` (the generator's per-item seeds), written to
``OUT/<i:06d>.png`` (atomically). So the set does not depend on the number of processes or the batch size, and a second run skips the items already written (an interrupted run resumes; a
larger ``-n`` extends the set). Process ``r`` of ``w`` takes the items ``i % w == r``.

``OUT/generation.json`` records the model and the settings; a folder made with other ones is refused. At the end
``OUT/index.csv`` lists ``file,label,seed`` of the n items, and ``--npz FILE`` packs them into ``images`` uint8
``(n, H, W, 3)``, ``labels`` and ``seeds`` (with only ``--npz``, the PNGs go to ``FILE`` without its suffix +
``_png/``). NAME: a registry name, ``local-dir:PATH`` or ``hf-hub:org/repo``.
"""

from __future__ import annotations

from zoo import sample_sets


def main(argv: list[str] | None = None) -> dict:
    return sample_sets.main(argv, "image", __doc__)


if __name__ == "__main__":
    main()
