"""Readers of models from other formats into what rnnplan runs: `onnx_rnn` (ONNX LSTM / GRU / RNN
chains, as torch.onnx.export writes them). torch modules are read by `rnnplan.dropin` itself."""
