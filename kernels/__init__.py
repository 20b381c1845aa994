"""Triton kernels, one op per file, each beside its pure-torch reference twin."""
from kernels.gemv import gemv, gemv_ref
from kernels.paged_decode_attention import paged_decode_attention, paged_decode_attention_ref
from kernels.prefill_attention import prefill_attention, prefill_attention_ref
from kernels.reshape_and_cache import reshape_and_cache, reshape_and_cache_ref
from kernels.rms_norm import fused_add_rms_norm, fused_add_rms_norm_ref, rms_norm, rms_norm_ref
from kernels.rotary_embedding import rotary_embedding, rotary_embedding_ref
from kernels.sampling import sample, sample_ref
from kernels.silu_and_mul import silu_and_mul, silu_and_mul_ref

__all__ = [
    "fused_add_rms_norm", "fused_add_rms_norm_ref",
    "gemv", "gemv_ref",
    "paged_decode_attention", "paged_decode_attention_ref",
    "prefill_attention", "prefill_attention_ref",
    "reshape_and_cache", "reshape_and_cache_ref",
    "rms_norm", "rms_norm_ref",
    "rotary_embedding", "rotary_embedding_ref",
    "sample", "sample_ref",
    "silu_and_mul", "silu_and_mul_ref",
]
