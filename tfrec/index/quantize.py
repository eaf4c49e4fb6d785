"""int8 item embeddings: per-item symmetric codes, and an exact scan over them in core TF ops.

An item row ``x`` [d] is stored as ``codes = round(x / s)`` int8 [d] and one
float32 scale ``s = max|x| / 127``, so ``x ~ codes * s`` with an error of at
most ``s / 2`` per dimension: 1 + 4/d bytes per dimension instead of 4. A
query's score against the item is ``s * (q . float(codes))``: the dot product
with the reconstruction, computed in float32 (TF's CPU MatMul has no int8
kernel, and its int32 / quantised ones measured 2-3x slower than float32; a
bfloat16 MatMul is faster than float32 on CPUs with AVX512-BF16, but casting
its scores back and scaling them costs more than it saves).

The scale doubles as the validity mark of a storage slot: padding slots get
scale 0 and score ``-inf``; a real all-zero row gets the smallest positive
float32 scale (its codes are 0, so it still scores exactly 0).

Scanning a whole catalog (:func:`scan_top_k`) goes through it in steps of a
few tens of thousands of items: each step casts its int8 codes to float32,
multiplies, and keeps only its own top candidates, so neither the float32
copy nor the ``[B, N]`` score matrix ever exists in full; both stay in cache.
"""

from __future__ import annotations

import tfrec  # noqa: F401  (sets TF_USE_LEGACY_KERAS before tensorflow loads)

import numpy as np
import tensorflow as tf

import tfrec.index.base as base

QUANTIZATIONS = ("none", "int8")
# Rows quantised at a time at build time (bounds float temporaries).
_ROWS_PER_STEP = 65536


def check_quantization(quantization: str) -> str:
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {quantization!r}")
    return quantization


def quantize_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row symmetric int8 codes.

    Args:
      rows: float32 ``[n, d]``.

    Returns:
      ``(codes int8 [n, d], scales float32 [n])`` with ``rows ~ codes * scales[:, None]``
      and every scale > 0.
    """
    codes = np.empty(rows.shape, dtype=np.int8)
    scales = np.empty(rows.shape[0], dtype=np.float32)
    for start in range(0, rows.shape[0], _ROWS_PER_STEP):
        part = np.asarray(rows[start : start + _ROWS_PER_STEP], dtype=np.float32)
        scale = np.maximum(np.abs(part).max(axis=1) / 127.0, np.finfo(np.float32).tiny).astype(np.float32)
        codes[start : start + len(part)] = np.clip(np.rint(part / scale[:, None]), -127, 127)
        scales[start : start + len(part)] = scale
    return codes, scales


def block_scores(
    queries: tf.Tensor, codes: tf.Tensor, scales: tf.Tensor, mask: bool = True, bias: tf.Tensor | None = None
) -> tf.Tensor:
    """Scores of every query against a stack of int8 blocks.

    Args:
      queries: float32 ``[B, d]``.
      codes: int8 ``[G, d, L]`` (items are columns).
      scales: float32 ``[G, L]``; 0 marks a padding slot.
      mask: give padding slots ``-inf`` (one more pass over the scores); when
        False they score 0 (:func:`block_mask` masks them later).
      bias: optional float32 ``[B, G]`` added to every score of a block (the
        query's score against the centroid of residual-coded blocks).

    Returns:
      float32 ``[B, G * L]``.
    """
    if codes.shape[0] == 1 and bias is None:  # one wide block: a plain MatMul, no transpose
        scores = tf.matmul(queries, tf.cast(codes[0], tf.float32)) * scales
    else:
        # [1, B, d] x [G, d, L] -> [G, B, L]: broadcasting BatchMatMul reads the blocks in place.
        dots = tf.matmul(queries[tf.newaxis], tf.cast(codes, tf.float32))
        scores = tf.transpose(dots, [1, 0, 2]) * scales[tf.newaxis]  # [B, G, L]
        if bias is not None:
            scores += bias[:, :, tf.newaxis]
        scores = tf.reshape(scores, [tf.shape(queries)[0], -1])
    return block_mask(scores, scales) if mask else scores


def block_mask(scores: tf.Tensor, scales: tf.Tensor) -> tf.Tensor:
    """``scores`` float32 ``[B, G * L]`` with ``-inf`` where ``scales`` ``[G, L]`` marks padding (0)."""
    return tf.where(tf.reshape(scales, [1, -1]) > 0, scores, tf.constant(base.NEG_INF, tf.float32))


def scan_top_k(
    queries: tf.Tensor, codes: tf.Variable, scales: tf.Variable, fetch: tf.Tensor, blocks_per_step: int,
    padding_in_last_step: bool = False, block_bias: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Exact top ``fetch`` slots by reconstructed score over every stored block.

    Args:
      queries: float32 ``[B, d]``.
      codes: int8 ``[NB, d, L]``; scales: float32 ``[NB, L]`` (0 = padding).
      fetch: int32 scalar >= 1.
      blocks_per_step: blocks cast and scored per loop step.
      padding_in_last_step: True when only the last step holds padding
        slots (one catalog-order chunk per step): the other steps then skip
        the masking pass over their scores.
      block_bias: optional float32 ``[B, NB]`` added to every score of a
        block (see :func:`block_scores`).

    Returns:
      ``(scores float32 [B, fetch], slots int32 [B, fetch])``, best first;
      ``slot = block * L + column``. Where fewer than ``fetch`` slots exist the
      trailing scores are ``-inf`` (slots then in range but meaningless).
    """
    num_blocks, _, width = codes.shape
    steps = -(-int(num_blocks) // blocks_per_step)
    batch = tf.shape(queries)[0]

    def step(i: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        start = i * blocks_per_step
        if blocks_per_step == 1:  # static shapes: block_scores takes its plain-MatMul path
            step_codes, step_scales = codes[start][tf.newaxis], scales[start][tf.newaxis]
        else:
            step_codes, step_scales = codes[start : start + blocks_per_step], scales[start : start + blocks_per_step]
        step_bias = None if block_bias is None else block_bias[:, start : start + blocks_per_step]
        scores = block_scores(queries, step_codes, step_scales, mask=not padding_in_last_step,
                              bias=step_bias)  # [B, <= G * L]
        if padding_in_last_step:
            scores = tf.cond(i == steps - 1, lambda: block_mask(scores, step_scales), lambda: scores)
        values, columns = base.chunked_top_k(scores, tf.minimum(fetch, tf.shape(scores)[1]))
        return values, columns, start * width

    top_values, slots = base.best_over_steps(step, steps, fetch, batch)
    top_slots = tf.minimum(slots, int(num_blocks) * int(width) - 1)
    return top_values, top_slots
