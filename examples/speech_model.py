"""A small speech-like model (features -> 3-layer bidirectional LSTM -> linear), its nn.LSTM swapped
for rnnplan.compile: the same outputs, for padded batches and for packed utterances of their own
lengths.

    python examples/speech_model.py
"""

import torch

import rnnplan


class Acoustic(torch.nn.Module):
    def __init__(self, features: int = 40, hidden: int = 96, tokens: int = 30):
        super().__init__()
        self.encoder = torch.nn.LSTM(features, hidden, num_layers=3, bidirectional=True, batch_first=True)
        self.classifier = torch.nn.Linear(2 * hidden, tokens)

    def forward(self, frames, lengths=None):
        if lengths is None:
            out, _ = self.encoder(frames)
        else:  # utterances of their own lengths, as a PackedSequence
            packed = torch.nn.utils.rnn.pack_padded_sequence(frames, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.encoder(packed)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=frames.shape[1])
        return self.classifier(out)


def main() -> None:
    torch.manual_seed(0)
    model = Acoustic().eval()
    frames = torch.randn(4, 50, 40)  # 4 utterances, 50 frames of 40 features
    lengths = torch.tensor([50, 31, 44, 12])
    with torch.no_grad():
        want_padded, want_packed = model(frames), model(frames, lengths)
        model.encoder = rnnplan.compile(model.encoder)  # the swap: the rest of the model is unchanged
        got_padded, got_packed = model(frames), model(frames, lengths)
    for name, got, want in (("padded", got_padded, want_padded), ("packed", got_packed, want_packed)):
        err = float((got - want).norm() / want.norm())
        print(f"{name:6} batch: logits {tuple(got.shape)}, relative difference from nn.LSTM {err:.1e}")
        assert err < 1e-5, f"{name}: {err}"
    print(model.encoder.explain())


if __name__ == "__main__":
    main()
