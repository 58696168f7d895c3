"""The bundled tiny models are measurably good at their job, on held-out data (thresholds set from measurement)."""

import pytest
import torch

import zoo
from tokenizers_audio.wavtokenizer.evaluate import evaluate
from zoo import data

# Measured with `python scripts/eval_wavtokenizer.py wavtokenizer-tiny-75tps` (see the model card): STOI 0.739,
# mel distance 1.72, 532 distinct codes on the first 8 held-out clips; the untrained model scores STOI 0.47 and a
# mel-VQ + Griffin-Lim codec at the same bitrate 0.63. The thresholds leave a margin for platform noise.
WAVTOKENIZER_TINY_75 = {"stoi": 0.72, "mel_distance": 1.85, "min_codes_used": 400}


@pytest.fixture(scope="module")
def heldout_speech():
    return data.speech("heldout")


def test_wavtokenizer_tiny_75tps_quality(heldout_speech):
    model = zoo.load("wavtokenizer-tiny-75tps")
    scores = evaluate(model, heldout_speech)
    assert scores["stoi"] >= WAVTOKENIZER_TINY_75["stoi"], scores
    assert scores["mel_distance"] <= WAVTOKENIZER_TINY_75["mel_distance"], scores
    # and it uses its codebook: held-out speech touches a good share of the codes
    tokens = model.encode(heldout_speech[:8], sample_rate=data.SPEECH_SAMPLE_RATE)
    used = torch.cat([tokens.codes[i, 0, : int(n)] for i, n in enumerate(tokens.lengths)]).unique().numel()
    assert used >= WAVTOKENIZER_TINY_75["min_codes_used"]

