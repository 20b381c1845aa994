"""Fused greedy / temperature sampling: one token per logits row, with its raw logprob and rank.

    sample(logits [R, V], temperature [R], seed) -> token_ids [R] int64, logprobs [R] fp32,
                                                   ranks [R] int64

The common case of runner/engine/sampler.py (each row greedy or plain temperature sampling: no
top-k, top-p, min-p, penalties or logits processors) without its dozen full passes over [R, V]
fp32 (log_softmax, copy, divide, softmax, noise, clamp, divide, argmax, rank count): the kernel
reads each logits row twice and writes three numbers.

Grid (R,): one program per row, looping over the vocabulary in BLOCK_V tiles, all math fp32
(logits may be fp32, fp16 or bf16; rows may be strided, the vocabulary dim must be contiguous).

  pass 1  per lane (BLOCK_V running states, reduced once after the loop, so the loop has no
          cross-lane reductions):
          - online max m and sum s of exp(x - m) of the RAW logits (the log-softmax normaliser);
            one exp per element: whichever of the old max and x is smaller is rescaled;
          - running argmax of the score: x for greedy rows (temperature == 0), x / T + g for
            random rows, g = -log(-log(u)) Gumbel noise from u ~ U(0, 1) clamped to
            [U_MIN, U_MAX] so that g is finite. A lane keeps its first best (strict >), and
            the lanes' bests are reduced to the lowest token id among equal scores: ties go
            to the lowest id, as torch.argmax.
  then    chosen token c, logprob = x_c - max - log(sum): the raw log_softmax entry, the same
          number the torch sampler reports (independent of temperature).
  pass 2  rank = 1 + #{tokens whose raw logit > x_c}: a second read of a row just streamed
          (partly from L2).

Gumbel-max: argmax_i (x_i / T + g_i) is an exact draw from softmax(x / T). It is the torch
sampler's exponential race in log space: with E_i = -log(u_i) ~ Exp(1),
log(p_i / E_i) = x_i / T - logsumexp(x / T) - log(E_i) = x_i / T + g_i - const, so given the
same u both pick the same token. Clamping u to fp32's (0, 1) resolution bounds g to about
[-4.5, 16.6], the same reach as the exponential race on fp32 uniforms: a token more than ~17
nats below the best one is (almost) never drawn.

Random numbers: counter-based Philox (10 rounds, Triton's tl.rand4x) keyed by the 64-bit seed,
so the same seed and logits give the same tokens on every run and for any block size. One
Philox call yields four 32-bit words, so column c takes word c % 4 of counter c // 4 (Philox
costs a quarter of one call per element; with one word per element it was 40% slower overall).
The counter must be unique per element of [R, V]: row * V + col overflows int32 once
R * V > 2^31 (R = 16384 rows of a 128k vocabulary), and mixing the row into the seed makes seed
s + 1 row 0 replay seed s row 1. So the counter is the int64 (row << 32) | (col // 4), which
Philox takes as its two 32-bit counter words (col // 4, row): unique for any R, V < 2^32, no
multiply. With per-row seeds (`seed` an int64 tensor [R], for seeded requests) the counter is
col // 4 alone: a row's noise then depends on its seed only, never on its position in the
batch (the caller changes the seed each step, e.g. hashing (request seed, output length)).

Tests pass the uniforms instead (USE_NOISE, noise [R, V] fp32) to compare token for token with
`sample_ref`, the pure-torch twin (log_softmax, argmax of x / T + Gumbel, rank by comparison).
NaN logits are not supported; a row of all -inf picks token 0 (as torch.argmax) with logprob
NaN (as log_softmax).
"""
from __future__ import annotations

import torch

from kernels.utils import is_interpreter, next_power_of_2, num_sms, tl, triton

# u is clamped to [U_MIN, U_MAX] before g = -log(-log(u)): both logs stay finite.
U_MIN = 1.1754943508222875e-38      # fp32's smallest normal: -log(u) <= 87.3, g >= -4.47
U_MAX = 1.0 - 2.0 ** -24            # fp32's largest value below 1: -log(u) > 0, g <= 16.6
_U_MIN = tl.constexpr(U_MIN)        # jit code reads module globals only as constexprs
_U_MAX = tl.constexpr(U_MAX)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@triton.jit
def _uniforms(seed, counter_hi, start, BLOCK_V: tl.constexpr):
    """[BLOCK_V] U(0, 1) floats for columns start + [0, BLOCK_V): one 10-round Philox call per
    four columns, column c taking word c % 4 of counter (counter_hi | c // 4). Philox is the
    kernel's dearest part; drawing all four words quarters it."""
    groups = start // 4 + tl.arange(0, BLOCK_V // 4)
    u0, u1, u2, u3 = tl.rand4x(seed, counter_hi + groups)
    # [u0_0, u1_0, u2_0, u3_0, u0_1, ...]: the interleave of two interleaves
    return tl.interleave(tl.interleave(u0, u2), tl.interleave(u1, u3))


# a new seed every call: not specialised on (its divisibility by 16 would double the variants)
@triton.jit(do_not_specialize=["seed"])
def sample_kernel(
    logits_ptr, temperature_ptr, noise_ptr, seeds_ptr,
    token_ids_ptr, logprobs_ptr, ranks_ptr,
    stride_l, stride_n,
    vocab_size, seed,                           # seed: unused with USE_NOISE or PER_ROW_SEED
    BLOCK_V: tl.constexpr,
    USE_NOISE: tl.constexpr,                    # read u from noise_ptr [R, V] fp32
    PER_ROW_SEED: tl.constexpr,                 # seed of row r at seeds_ptr[r] (int64)
):
    row = tl.program_id(0).to(tl.int64)
    lanes = tl.arange(0, BLOCK_V)
    row_logits = logits_ptr + row * stride_l
    temp = tl.load(temperature_ptr + row)
    greedy = temp == 0.0
    if PER_ROW_SEED:
        row_seed = tl.load(seeds_ptr + row)
        counter_hi = row * 0                    # counter = col // 4: the seed alone names the row
    else:
        row_seed = seed
        counter_hi = row << 32                  # counter = (col // 4, row) in two 32-bit words

    run_max = tl.full([BLOCK_V], float("-inf"), tl.float32)   # per lane
    run_sum = tl.zeros([BLOCK_V], tl.float32)                 # sum exp(x - run_max)
    best = tl.full([BLOCK_V], float("-inf"), tl.float32)      # best score seen by the lane
    best_id = tl.zeros([BLOCK_V], tl.int32)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + lanes
        mask = cols < vocab_size
        x = tl.load(row_logits + cols, mask=mask, other=float("-inf")).to(tl.float32)
        hi = tl.maximum(run_max, x)
        lo = tl.minimum(run_max, x)
        # both -inf (masked or banned lane, nothing finite yet): exp(-inf - 0) = 0, no inf - inf
        e = tl.exp(lo - tl.where(hi == float("-inf"), 0.0, hi))
        run_sum = tl.where(x > run_max, run_sum * e + 1.0, run_sum + e)
        run_max = hi
        if greedy:
            score = x
        else:
            if USE_NOISE:
                u = tl.load(noise_ptr + row * stride_n + cols, mask=mask, other=0.5)
            else:
                u = _uniforms(row_seed, counter_hi, start, BLOCK_V)
            u = tl.minimum(tl.maximum(u, _U_MIN), _U_MAX)
            score = x / temp - tl.log(-tl.log(u))         # -inf logits stay -inf
        take = score > best                               # strict: a lane keeps its first best
        best = tl.where(take, score, best)
        best_id = tl.where(take, cols, best_id)

    row_max = tl.max(run_max, axis=0)
    safe_max = tl.where(row_max == float("-inf"), 0.0, row_max)
    row_sum = tl.sum(run_sum * tl.exp(run_max - safe_max), axis=0)
    top = tl.max(best, axis=0)
    # lowest id among the lanes holding the top score (all lanes when the row is all -inf: 0)
    token = tl.min(tl.where(best == top, best_id, vocab_size), axis=0)
    x_c = tl.load(row_logits + token).to(tl.float32)
    logprob = x_c - row_max - tl.log(row_sum)

    above = tl.zeros([BLOCK_V], tl.int32)
    for start in range(0, vocab_size, BLOCK_V):
        cols = start + lanes
        x = tl.load(row_logits + cols, mask=cols < vocab_size, other=float("-inf"))
        above += (x.to(tl.float32) > x_c).to(tl.int32)
    tl.store(token_ids_ptr + row, token.to(tl.int64))
    tl.store(logprobs_ptr + row, logprob)
    tl.store(ranks_ptr + row, tl.sum(above, axis=0).to(tl.int64) + 1)


def _launch_config(num_rows: int, vocab_size: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK_V, num_warps). The kernel is bound by its arithmetic (Philox and two logs per
    element of a random row), not by its two reads. H100, V = 128256 bf16, 3/4 random rows:
    2048 x 16 warps (4 elements a thread) takes R = 512 in 288 us (torch's passes: 2.4 ms) and
    beats 1024 or 4096 wide tiles and 4 or 8 warps; with fewer rows than SMs 4096 x 16 wins
    (R = 64: 80 us against 89; R = 1: 32 against 41). All-greedy R = 512: 130 us."""
    if is_interpreter():   # few, wide tiles: the interpreter is paid per op, not per element
        return max(4, min(1024, next_power_of_2(vocab_size))), 4
    block = 4096 if num_rows < num_sms(device) else 2048
    return max(4, min(block, next_power_of_2(vocab_size))), 16


def sample(logits: torch.Tensor, temperature: torch.Tensor, seed: int | torch.Tensor,
           noise: torch.Tensor | None = None, block_v: int | None = None
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logits [R, V] (fp32/fp16/bf16, vocabulary dim contiguous), temperature [R] fp32 (0 for a
    greedy row), seed an int in [0, 2^63) for the whole batch or an int64 tensor [R] of per-row
    seeds; noise [R, V] fp32 uniforms replace the generated ones (tests).
    -> (token_ids [R] int64, logprobs [R] fp32 raw log_softmax of the token, ranks [R] int64).
    block_v overrides the tile width (a power of two), e.g. to cross tiles on small tests."""
    if logits.dim() != 2:
        raise ValueError(f"logits must be [num_rows, vocab], got shape {tuple(logits.shape)}")
    if logits.dtype not in DTYPES:
        raise ValueError(f"logits must be one of {DTYPES}, got {logits.dtype}")
    num_rows, vocab_size = logits.shape
    if not 0 < vocab_size < 2 ** 31:
        raise ValueError(f"vocab size must be in [1, 2^31), got {vocab_size}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    device = logits.device
    if (temperature.shape != (num_rows,) or temperature.dtype != torch.float32
            or temperature.device != device):
        raise ValueError(f"temperature must be float32 [{num_rows}] on {device}, got "
                         f"{temperature.dtype} {tuple(temperature.shape)} on {temperature.device}")
    temperature = temperature.contiguous()
    if isinstance(seed, torch.Tensor):
        if seed.shape != (num_rows,) or seed.dtype != torch.int64 or seed.device != device:
            raise ValueError(f"per-row seeds must be int64 [{num_rows}] on {device}, got "
                             f"{seed.dtype} {tuple(seed.shape)} on {seed.device}")
        seeds, seed = seed.contiguous(), 0
    else:
        if not 0 <= int(seed) < 2 ** 63:
            raise ValueError(f"seed must be an int in [0, 2^63), got {seed}")
        seeds, seed = None, int(seed)
    if noise is not None:
        if noise.shape != logits.shape or noise.dtype != torch.float32 or noise.device != device:
            raise ValueError(f"noise must be float32 {tuple(logits.shape)} on {device}, got "
                             f"{noise.dtype} {tuple(noise.shape)} on {noise.device}")
        if noise.stride(1) != 1:
            noise = noise.contiguous()
    block, num_warps = _launch_config(num_rows, vocab_size, device)
    if block_v is None:
        block_v = block
    elif block_v < 4 or block_v & (block_v - 1):
        raise ValueError(f"block_v must be a power of two >= 4, got {block_v}")

    token_ids = torch.empty(num_rows, dtype=torch.int64, device=device)
    logprobs = torch.empty(num_rows, dtype=torch.float32, device=device)
    ranks = torch.empty(num_rows, dtype=torch.int64, device=device)
    if num_rows > 0:
        sample_kernel[(num_rows,)](
            logits, temperature,
            noise if noise is not None else logits,          # unused without USE_NOISE
            seeds if seeds is not None else temperature,     # unused without PER_ROW_SEED
            token_ids, logprobs, ranks,
            logits.stride(0), noise.stride(0) if noise is not None else 0,
            vocab_size, seed,
            BLOCK_V=block_v,
            USE_NOISE=noise is not None,
            PER_ROW_SEED=seeds is not None,
            num_warps=num_warps,
        )
    return token_ids, logprobs, ranks


def sample_ref(logits: torch.Tensor, temperature: torch.Tensor, noise: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pure-torch twin of `sample` given the uniforms: noise [R, V] (greedy rows ignore it)."""
    x = logits.float()                                                   # [R, V]
    greedy = temperature == 0                                            # [R]
    u = noise.float().clamp(U_MIN, U_MAX)
    gumbel = -torch.log(-torch.log(u))                                   # [R, V]
    t = torch.where(greedy, torch.ones_like(temperature), temperature)  # no 0 / 0 on greedy rows
    scores = torch.where(greedy[:, None], x, x / t[:, None] + gumbel)    # [R, V]
    token_ids = scores.argmax(dim=-1)                                    # first max wins
    logprobs = torch.log_softmax(x, dim=-1).gather(1, token_ids[:, None]).squeeze(1)
    chosen = x.gather(1, token_ids[:, None])                             # [R, 1]
    ranks = (x > chosen).sum(dim=-1) + 1
    return token_ids, logprobs, ranks
