"""Many clips of a class-conditional audio generator (spoken digits over WavTokenizer codes): a folder of WAVs
(and optionally one .npz), sharded across processes, resumable.

    python scripts/generate_audio.py llamagen-gpt-tiny-digits -n 1000 --out clips/ --npz clips.npz
    python scripts/generate_audio.py NAME -n 100 --class 7 --out sevens/ --cfg 3.0
    accelerate launch scripts/generate_audio.py NAME -n 10000 --out clips/               # one share per GPU
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 scripts/generate_audio.py NAME -n 100 --out c/

The machinery is `zoo.sample_sets` (shared with scripts/generate_image.py). Item ``i`` (0 <= i < n) is class
``i % num_classes`` (or ``--class``) drawn with seed ``--seed + i`` (the generator's per-item seeds), written to
``OUT/<i:06d>.wav`` (16-bit PCM at the paired tokenizer's sample rate, atomically). So the set does not depend on the
number of processes or the batch size, and a second run skips the items already written. Process ``r`` of ``w``
takes the items ``i % w == r``.

``OUT/generation.json`` records the model and the settings; a folder made with other ones is refused. At the end
``OUT/index.csv`` lists ``file,label,seed`` of the n items, and ``--npz FILE`` packs them into ``audio`` float32
``(n, T)``, ``sample_rate``, ``labels`` and ``seeds`` (with only ``--npz``, the WAVs go to ``FILE`` without its
suffix + ``_wav/``). NAME: a registry name, ``local-dir:PATH`` or ``hf-hub:org/repo``.
"""

from __future__ import annotations

from zoo import sample_sets


def main(argv: list[str] | None = None) -> dict:
    return sample_sets.main(argv, "audio", __doc__)


if __name__ == "__main__":
    main()
