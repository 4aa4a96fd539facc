"""Section 2, received attention: softmax attention averaged over heads and queries, [T, N], in
frame chunks; the attention output reuses the same probabilities. Section 3: bilinear pooling."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from core_reference import FAST, bilinear_ref, ref_received
from hypothesis import given
from hypothesis import strategies as st

from earlytom_vllm.core import attention_with_received, pool_received, received_attention


def qkv(t, h, n, d, *, seed=0, dtype=torch.float32, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return [(scale * torch.randn(t, h, n, d, generator=g, dtype=torch.float64)).to(dtype)
            for _ in range(3)]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 6, 100])
def test_received_attention_matches_float64_reference(chunk):
    q, k, _ = qkv(5, 3, 17, 8, seed=1, dtype=torch.float64, scale=1.5)
    got = received_attention(q, k, chunk_frames=chunk)
    assert got.shape == (5, 17)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, ref_received(q, k), atol=1e-14, rtol=1e-12)


@pytest.mark.parametrize("chunk", [1, 2, 3, 4, 7])
def test_received_attention_float32_within_float32_error(chunk):
    q, k, _ = qkv(4, 2, 29, 16, seed=2)
    got = received_attention(q, k, chunk_frames=chunk)
    assert got.dtype in (torch.float32, torch.float64)
    torch.testing.assert_close(got.double(), ref_received(q, k), atol=1e-7, rtol=1e-5)
    # every row is a distribution over keys (mean of row-stochastic matrices)
    torch.testing.assert_close(got.double().sum(-1), torch.ones(4, dtype=torch.float64),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_received_attention_low_precision_inputs_accumulate_in_float32(dtype):
    q, k, _ = qkv(3, 2, 31, 8, seed=3, dtype=dtype, scale=2.0)
    got = received_attention(q, k, chunk_frames=2)
    assert got.dtype in (torch.float32, torch.float64)
    # reference from the same low-precision values, computed in float64
    torch.testing.assert_close(got.double(), ref_received(q, k), atol=2e-6, rtol=1e-4)


@FAST
@given(st.integers(1, 7), st.integers(1, 3), st.integers(1, 12), st.integers(1, 9),
       st.integers(1, 9), st.integers(0, 2**16))
def test_received_attention_any_chunk_equals_reference(t, h, n, d, chunk, seed):
    q, k, _ = qkv(t, h, n, d, seed=seed, dtype=torch.float64, scale=2.0)
    torch.testing.assert_close(received_attention(q, k, chunk_frames=chunk), ref_received(q, k),
                               atol=1e-13, rtol=1e-11)


def test_received_attention_frames_do_not_interact():
    q, k, _ = qkv(6, 2, 11, 4, seed=4, dtype=torch.float64)
    whole = received_attention(q, k, chunk_frames=4)
    for i in range(6):
        alone = received_attention(q[i : i + 1], k[i : i + 1], chunk_frames=1)
        torch.testing.assert_close(whole[i : i + 1], alone, atol=1e-15, rtol=0)


def test_received_attention_uniform_when_keys_are_equal():
    q = torch.randn(2, 3, 10, 4, dtype=torch.float64)
    k = torch.ones(2, 3, 10, 4, dtype=torch.float64)
    torch.testing.assert_close(received_attention(q, k), torch.full((2, 10), 0.1,
                                                                   dtype=torch.float64))


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_attention_with_received_output_and_sum(chunk, dtype):
    t, h, n, d = 5, 3, 13, 8
    q, k, v = qkv(t, h, n, d, seed=5, dtype=dtype, scale=1.3)
    out, rsum = attention_with_received(q, k, v, chunk_frames=chunk)
    assert out.shape == v.shape and out.dtype == v.dtype
    assert rsum.shape == (t, n)
    # output == explicit softmax(q k^T / sqrt(d)) @ V (float64) and == torch SDPA
    q64, k64, v64 = q.double(), k.double(), v.double()
    probs = torch.softmax(q64 @ k64.transpose(-1, -2) / math.sqrt(d), dim=-1)
    tol = {"atol": 1e-12, "rtol": 1e-10} if dtype == torch.float64 else {"atol": 2e-6, "rtol": 1e-5}
    torch.testing.assert_close(out.double(), probs @ v64, **tol)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), **tol)
    # received SUM over heads and queries; / (H * N) is received_attention
    torch.testing.assert_close(rsum.double(), probs.sum(dim=(1, 2)), atol=1e-10 if dtype ==
                               torch.float64 else 1e-4, rtol=1e-6)
    torch.testing.assert_close(rsum / (h * n), received_attention(q, k, chunk_frames=chunk),
                               **tol)
    torch.testing.assert_close((rsum / (h * n)).double(), ref_received(q, k), **tol)


def test_attention_with_received_value_dim_may_differ():
    q, k, _ = qkv(3, 2, 7, 4, seed=6, dtype=torch.float64)
    v = torch.randn(3, 2, 7, 5, dtype=torch.float64)
    out, _ = attention_with_received(q, k, v, chunk_frames=2)
    probs = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)
    torch.testing.assert_close(out, probs @ v)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_attention_with_received_low_precision(dtype):
    q, k, v = qkv(3, 2, 19, 8, seed=7, dtype=dtype)
    out, rsum = attention_with_received(q, k, v, chunk_frames=2)
    assert out.dtype == dtype
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    torch.testing.assert_close(out.double(), ref, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close((rsum / (2 * 19)).double(), ref_received(q, k), atol=2e-6,
                               rtol=1e-4)


@pytest.mark.parametrize(("t", "chunk"), [(7, 1), (7, 3), (7, 7), (7, 10), (8, 4)])
def test_probabilities_are_computed_once_per_frame_chunk(monkeypatch, t, chunk):
    """Never [T, H, N, N] at once: each softmax sees at most `chunk` frames; one softmax per chunk
    serves both the output and the received attention."""
    seen = []
    real_softmax = torch.softmax

    def spy(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real_softmax(x, *args, **kwargs)

    monkeypatch.setattr(torch, "softmax", spy)
    monkeypatch.setattr(torch.Tensor, "softmax", lambda self, *a, **kw: spy(self, *a, **kw))
    q, k, v = qkv(t, 2, 9, 4, seed=8)
    attention_with_received(q, k, v, chunk_frames=chunk)
    n_chunks = math.ceil(t / chunk)
    assert len(seen) == n_chunks
    assert all(s[0] <= chunk for s in seen)
    assert sum(s[0] for s in seen) == t
    seen.clear()
    received_attention(q, k, chunk_frames=chunk)
    assert len(seen) == n_chunks and all(s[0] <= chunk for s in seen)


def test_custom_scale():
    q, k, v = qkv(2, 2, 6, 4, seed=9, dtype=torch.float64)
    probs = torch.softmax(0.3 * (q @ k.transpose(-1, -2)), dim=-1)
    out, rsum = attention_with_received(q, k, v, scale=0.3)
    torch.testing.assert_close(out, probs @ v)
    torch.testing.assert_close(rsum, probs.sum(dim=(1, 2)))
    torch.testing.assert_close(received_attention(q, k, scale=0.3), probs.mean(dim=(1, 2)))


@pytest.mark.parametrize(
    ("args", "name"),
    [((torch.zeros(2, 3, 4), torch.zeros(2, 3, 4)), "q"),
     ((torch.zeros(2, 1, 3, 4), torch.zeros(2, 1, 3, 5)), "k"),
     ((torch.zeros(2, 1, 3, 4, dtype=torch.int64), torch.zeros(2, 1, 3, 4)), "q")],
)
def test_bad_shapes_raise_value_error_naming_the_tensor(args, name):
    with pytest.raises(ValueError, match=name):
        received_attention(*args)
    with pytest.raises(ValueError, match=name):
        attention_with_received(*args, torch.zeros(2, 1, 3, 4))


def test_bad_v_and_chunk():
    q = torch.zeros(2, 1, 3, 4)
    with pytest.raises(ValueError, match="v"):
        attention_with_received(q, q, torch.zeros(2, 1, 5, 4))
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="chunk_frames"):
            received_attention(q, q, chunk_frames=bad)
        with pytest.raises(ValueError, match="chunk_frames"):
            attention_with_received(q, q, q, chunk_frames=bad)


# --- pooling of the received attention --------------------------------------------------------

def test_pool_received_is_bilinear_27_to_14_align_corners_false():
    g = torch.Generator().manual_seed(10)
    rec = torch.rand(3, 729, generator=g, dtype=torch.float64)
    got = pool_received(rec, 27, 14)
    assert got.shape == (3, 196)
    ref = bilinear_ref(rec.reshape(3, 27, 27), 14).reshape(3, 196)
    torch.testing.assert_close(got, ref, atol=1e-14, rtol=0)


def test_pool_received_uses_raster_order():
    # a ramp along x only: pooled value depends only on the pooled column (raster: row-major)
    ramp = torch.arange(27, dtype=torch.float64).repeat(27)  # [729], value = column index
    got = pool_received(ramp.unsqueeze(0), 27, 14).reshape(14, 14)
    assert torch.allclose(got, got[0:1].expand(14, 14))
    assert (got[0, 1:] > got[0, :-1]).all()


def test_pool_received_rejects_bad_shape():
    with pytest.raises(ValueError, match="received"):
        pool_received(torch.zeros(2, 728), 27, 14)
    with pytest.raises(ValueError, match="received"):
        pool_received(torch.zeros(729), 27, 14)
