"""Compiles every Triton kernel of fastrnn.kernels for real GPU targets (no GPU needed).

Run as a script by tests/test_triton_compile.py, in a process WITHOUT TRITON_INTERPRET: under the
interpreter @triton.jit gives interpreted functions, which cannot be compiled. Usage:
    python tests/_triton_compile_check.py CC DTYPE     (CC: 80 or 90; DTYPE: fp32 or bf16)
Prints one line per kernel variant and exits non-zero on the first failure.
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402

try:
    from fastrnn.kernels import lstm_step, math as kmath, sparse_attention, sparse_attention_bwd  # noqa: E402
except ImportError:  # not installed: the source tree's kernels/
    from kernels import lstm_step, math as kmath, sparse_attention, sparse_attention_bwd  # noqa: E402

TILES = dict(ACC=tl.float32, BLOCK_B=16, BLOCK_H=32, BLOCK_K=32)


def variants(dt):
    """(kernel, signature, constexprs) as the backend launches them: states and weights in `dt`,
    gradient buffers, scores and normalisers in float32 (triton_backend._grad_dtype)."""
    p, g, i32, i64 = "*" + dt, "*fp32", "*i32", "*i64"
    lstm_fwd = dict(xg_ptr=p, h_ptr=p, c_ptr=p, whh_ptr=p, gates_ptr=p, c_out_ptr=p, h_out_ptr=p, B="i32", H="i32")
    lstm_bwd = dict(dg_next_ptr=g, whh_ptr=p, rec_scale_ptr=g, dh_ptr=g, dc_ptr=g, gates_ptr=p, c_ptr=p, c_in_ptr=p,
                    dg_out_ptr=g, dc_out_ptr=g, scale_t_ptr=g, B="i32", H="i32")
    rec = dict(dg_ptr=g, whh_ptr=p, out_ptr=g, scale_ptr=g, B="i32", H="i32")
    scores = dict(hhat_ptr=p, key_ptr=p, wh_ptr=p, s_ptr=p, q_ptr=p, score_ptr=g, lo_ptr=i32, hi_ptr=i32,
                  s_lo="i32", s_hi="i32", B="i32", H="i32", A="i32", S_cap="i32")
    att_fwd = dict(hhat_ptr=p, y_ptr=p, mem_ptr=p, key_ptr=p, wm_ptr=p, score_ptr=g, idx_ptr=i64, w_ptr=g,
                   thr_ptr=i32, z_ptr=g, lo_ptr=i32, hi_ptr=i32, wr_ptr=i32, s_lo="i32", s_hi="i32",
                   write_any="i32", B="i32", H="i32", A="i32", S_cap="i32")
    att_bwd = dict(dy_ptr=g, rec_ptr=g, mem_ptr=p, key_ptr=p, wh_ptr=p, wm_ptr=p, s_ptr=p, q_ptr=p, idx_ptr=i64,
                   w_ptr=g, thr_ptr=i32, z_ptr=g, gm_ptr=g, dkey_ptr=g, dv_ptr=g, gh_ptr=g, dq_ptr=g,
                   wr_ptr=i32, write_any="i32", B="i32", H="i32", A="i32")
    prec = "tf32" if dt == "fp32" else "ieee"
    yield lstm_step.lstm_fwd_step_kernel, lstm_fwd, dict(DOT_PREC=prec)
    for row_schedule in (False, True):
        for has_rec in (True, False):
            yield lstm_step.lstm_bwd_step_kernel, lstm_bwd, dict(HAS_REC=has_rec, ROW_SCHEDULE=row_schedule,
                                                                 DOT_PREC=prec)
        yield lstm_step.recurrent_grad_kernel, rec, dict(ROW_SCHEDULE=row_schedule, DOT_PREC=prec)
    for mlp in (True, False):
        yield sparse_attention.sab_scores_kernel, scores, dict(MLP=mlp, BLOCK_S=16, BLOCK_A=32, DOT_PREC=prec)
    for prov in (False, True):
        sel = dict(K_TOP=5, K_PAD=8, PROVISIONAL=prov, BLOCK_A=32, DOT_PREC=prec)
        yield sparse_attention.sab_attention_fwd_kernel, att_fwd, dict(sel, BLOCK_S=128)
    for mlp, prov in ((True, False), (False, True)):
        sab = dict(K_TOP=5, K_PAD=8, MLP=mlp, PROVISIONAL=prov, BLOCK_A=32, DOT_PREC=prec)
        yield sparse_attention_bwd.sab_attention_bwd_kernel, att_bwd, dict(sab, HAS_REC=True)


def main(cc: int, dt: str) -> None:
    assert not kmath.INTERPRET, "compile check must run without TRITON_INTERPRET"
    target = GPUTarget("cuda", cc, 32)
    for fn, sig, consts in variants(dt):
        consts = {k: v for k, v in dict(TILES, **consts).items() if k in fn.arg_names}
        signature = dict(sig, **{name: "constexpr" for name in consts})
        compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=consts),
                                  target=target)
        assert compiled.asm.get("cubin"), f"{fn.__name__}: no cubin for sm_{cc}"
        flags = ",".join(f"{k}={v}" for k, v in consts.items() if k in ("HAS_REC", "MLP", "PROVISIONAL"))
        print(f"ok sm_{cc} {dt} {fn.__name__} {flags} ({len(compiled.asm['cubin'])} bytes cubin)", flush=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
