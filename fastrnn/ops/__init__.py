"""The op layer: the Python side of fastrnn's operators, one module per op, shared by every device.

    attention.py   SABAttention (the attention record every backend returns) and slot_steps
    glue.py        what the ops' autograd formulas share: incoming-gradient handling, bias gradients,
                   and the differentiable backward (recomputed through the reference) used when
                   autograd asks for a graph of the gradient (create_graph=True, double backward)
    lstm.py        fastrnn::lstm_forward / lstm_backward (and lstm_mixed_*, bfloat16 mixed precision):
                   lstm_layer, mixed_lstm_layer, autograd and fake kernels
    sab.py         fastrnn::sab_forward / sab_backward (and sab_mixed_*): sab_layer, mixed_sab_layer,
                   autograd and fake kernels
    triton_backend.py  lstm_layer and sab_layer as autograd Functions over the Triton kernels
    cuda_build.py  builds and loads the CUDA implementations of the ops (csrc/cuda/); its lstm_layer and
                   sab_layer are lstm.py's and sab.py's on CUDA tensors

The `fastrnn::` ops are defined in C++ (every schema in csrc/ops.cpp) and implemented per device
(csrc/cpu/, csrc/cuda/; docs/CONTRACT.md, "Layout"); the autograd and fake kernels registered here hold
for every device's implementation.
No module here imports the oracle at import time: `fastrnn.reference` (`fastrnn.reference_bf16` for the
mixed ops) is used only by the differentiable backward, which recomputes through it on purpose.
"""
