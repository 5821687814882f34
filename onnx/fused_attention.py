"""Export-time fused attention: the UNet's attention cores traced as ONNX Runtime's `com.microsoft.MultiHeadAttention`.

diffusers' `AttnProcessor2_0` computes softmax(Q Kᵀ / √d) V with `F.scaled_dot_product_attention`; the TorchScript
exporter writes that as MatMul / Mul / Softmax / MatMul over [batch, heads, tokens, tokens] score tensors, which ONNX
Runtime then runs unfused (at 1024² the self-attention scores of one SDXL layer are 2 × 10 × 4096 × 4096 values).
`FusedAttnProcessor` traces the same computation as one `MultiHeadAttention` node instead (inputs: the projected
query, key and value [batch, tokens, heads × head_dim]; attribute num_heads; default scale 1/√head_dim, as SDPA), for
which ONNX Runtime has CPU kernels (fp32, fp16) and CUDA kernels (flash / memory-efficient attention).

Unlike onnxruntime's Python fusion pass (`export_onnx.py --ort-optimize`), nothing else changes: the Q/K/V/out
projections keep their diffusers parameter names (LoRA merging by name still works), the graph runs on the CPU
execution provider too, and it costs nothing at export time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DOMAIN = "com.microsoft"


class _MultiHeadAttention(torch.autograd.Function):
    """SDPA over [batch, tokens, heads × head_dim] projections; exported as one MultiHeadAttention node."""

    @staticmethod
    def forward(ctx, query, key, value, heads: int):  # noqa: ARG004 (autograd.Function signature)
        batch = query.shape[0]
        head_dim = query.shape[-1] // heads

        def split(x):
            return x.view(batch, -1, heads, head_dim).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value), dropout_p=0.0, is_causal=False)
        return out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)

    @staticmethod
    def symbolic(g, query, key, value, heads: int):
        out = g.op(f"{DOMAIN}::MultiHeadAttention", query, key, value, num_heads_i=heads)
        out.setType(query.type())
        return out


class FusedAttnProcessor:
    """diffusers' `AttnProcessor2_0` for the case SDXL's UNet uses (token inputs, no mask, no extra norms), with
    the attention core as [`_MultiHeadAttention`]. Other cases raise instead of exporting something different."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        unsupported = {
            "attention_mask": attention_mask is not None,
            "spatial_norm": attn.spatial_norm is not None,
            "group_norm": attn.group_norm is not None,
            "norm_q/norm_k": attn.norm_q is not None or attn.norm_k is not None,
            "4-D input": hidden_states.ndim != 3,
        }
        if any(unsupported.values()):
            raise ValueError(f"fused attention export does not cover {[k for k, v in unsupported.items() if v]}")
        residual = hidden_states
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        hidden_states = _MultiHeadAttention.apply(query, key, value, attn.heads)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor
