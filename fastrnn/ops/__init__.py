"""The op layer: the Python side of fastrnn's operators, one module per op, shared by every device.

    attention.py   SABAttention (the attention record every backend returns) and slot_steps
    glue.py        what the ops' autograd formulas share: incoming-gradient handling, bias gradients,
                   and the differentiable backward (recomputed through the reference) used when
                   autograd asks for a graph of the gradient (create_graph=True, double backward)
    lstm.py        fastrnn::lstm_forward / lstm_backward: lstm_layer, autograd and fake kernels
    sab.py         fastrnn::sab_forward / sab_backward: sab_layer, autograd and fake kernels
    triton_backend.py  lstm_layer and sab_layer as autograd Functions over the Triton kernels

The `fastrnn::` ops are defined in C++ (csrc/ops.cpp) and implemented per device (csrc/cpu/, later
csrc/cuda/); the autograd and fake kernels registered here hold for every device's implementation.
No module here imports the oracle at import time: `fastrnn.reference` is used only by the
differentiable backward, which recomputes through it on purpose.
"""
