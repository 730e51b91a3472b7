"""Streaming: chunks of a few frames at a time, the state of one call handed to the next (on a GPU it
stays there), the same result as the whole utterance at once.

    python examples/streaming.py
"""

import torch

import rnnplan


def main() -> None:
    torch.manual_seed(0)
    # Strict fp32 on both sides, to compare to fp32 rounding (by default a GPU runs fp32 modules with
    # tf32 products, torch and rnnplan alike, and chunks then differ from the whole at tf32 rounding).
    torch.backends.cudnn.allow_tf32 = False
    lstm = torch.nn.LSTM(40, 128, num_layers=2).eval()
    device = "cuda" if torch.cuda.is_available() and rnnplan.backends.cupy_unavailable_reason() is None else "cpu"
    lstm = lstm.to(device)
    fast = rnnplan.compile(lstm)
    utterance = torch.randn(64, 1, 40, device=device)  # 64 frames, batch 1
    with torch.no_grad():
        whole, (h, c) = lstm(utterance)
    state, outputs, start = None, [], 0
    for size in [1, 4, 16, 1, 4, 16, 22]:  # chunk sizes as a microphone might deliver them
        out, state = fast(utterance[start:start + size], state)
        outputs.append(out)
        start += size
    streamed = torch.cat(outputs)
    err = float((streamed - whole).norm() / whole.norm())
    print(f"{len(outputs)} chunks on {device}: relative difference from the whole utterance {err:.1e}; "
          f"state on {state[0].device}; {fast.cache_info().executors} shapes planned")
    assert err < 1e-4 and float((state[0] - h).abs().max()) < 1e-4


if __name__ == "__main__":
    main()
