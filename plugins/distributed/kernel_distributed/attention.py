"""Attention over a token sequence split across processes: Ulysses head exchange and ring attention.

Shapes follow :func:`kernel_layers.attention_dispatch.dispatch_attention`: ``(B, H, L, D)``.  Each rank
holds ``L_r`` tokens of the sequence (``sizes[r]``, known to every rank from the split, so shards of
unequal length need no extra exchange); collectives run on equal-size buffers padded to ``max(sizes)``
and the padding is cut off again (ring attention masks it).

* Ulysses (Jacobs et al., arXiv:2309.14509): an all-to-all turns ``(B, H, L_r, D)`` into
  ``(B, H/u, sum(L), D)`` -- every token, a slice of the heads -- ordinary attention runs on it, and the
  inverse all-to-all gives each rank its own tokens back with every head.
* Ring (Liu et al., arXiv:2310.01889): each rank keeps its queries and visits every key/value block,
  merging partial results with the online softmax (Milakov & Gimelshein, arXiv:1805.02867):
  ``m' = max(m, rowmax(S))``, ``l' = l e^{m - m'} + rowsum(e^{S - m'})``, ``o' = o e^{m - m'} + e^{S - m'} V``.

With both degrees above one, Ulysses runs inside each row of the grid and the ring along its columns.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from kernel_layers.attention_dispatch import dispatch_attention

from kernel_distributed.runtime import Mesh, collective


def _pad_seq(x: torch.Tensor, length: int) -> torch.Tensor:
    return x if x.shape[2] == length else F.pad(x, (0, 0, 0, length - x.shape[2]))


# ----------------------------------------------------------------------------- Ulysses
def seq_to_heads(x: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """``(B, H, L_r, D)`` on every rank of ``group`` -> ``(B, H/u, sum(sizes), D)``: all tokens, this rank's heads."""
    u = len(sizes)
    b, h, _, d = x.shape
    longest = max(sizes)
    send = _pad_seq(x, longest).reshape(b, u, h // u, longest, d).transpose(0, 1).contiguous()
    recv = torch.empty_like(send)
    with collective("Ulysses all-to-all (sequence -> heads)"):
        dist.all_to_all_single(recv, send, group=group)
    return torch.cat([recv[j, :, :, :n] for j, n in enumerate(sizes)], dim=2)


def heads_to_seq(y: torch.Tensor, sizes: list[int], rank: int, group) -> torch.Tensor:
    """Inverse of :func:`seq_to_heads`: ``(B, H/u, sum(sizes), D)`` -> ``(B, H, sizes[rank], D)``."""
    u = len(sizes)
    b, hu, _, d = y.shape
    longest = max(sizes)
    send = torch.stack([_pad_seq(part, longest) for part in y.split(sizes, dim=2)]).contiguous()
    recv = torch.empty_like(send)
    with collective("Ulysses all-to-all (heads -> sequence)"):
        dist.all_to_all_single(recv, send, group=group)
    return recv.transpose(0, 1).reshape(b, u * hu, longest, d)[:, :, : sizes[rank]]


# ----------------------------------------------------------------------------- ring
class _OnlineSoftmax:
    """Running ``(max, sum, output)`` of softmax attention over key blocks seen so far."""

    def __init__(self, q: torch.Tensor, scale: float, dtype: torch.dtype):
        self.q, self.scale, self.dtype = q.to(dtype), scale, dtype
        shape = q.shape[:-1] + (1,)
        self.m = torch.full(shape, float("-inf"), dtype=dtype, device=q.device)
        self.l = torch.zeros(shape, dtype=dtype, device=q.device)
        self.o = None

    def add(self, k: torch.Tensor, v: torch.Tensor) -> None:
        scores = torch.matmul(self.q, k.to(self.dtype).transpose(-1, -2)) * self.scale
        m_new = torch.maximum(self.m, scores.amax(dim=-1, keepdim=True))
        p = torch.exp(scores - m_new)
        keep = torch.exp(self.m - m_new)  # 0 on the first block (m = -inf)
        self.l = self.l * keep + p.sum(dim=-1, keepdim=True)
        pv = torch.matmul(p, v.to(self.dtype))
        self.o = pv if self.o is None else self.o * keep + pv
        self.m = m_new

    def result(self) -> torch.Tensor:
        return self.o / self.l


def ring_attention(q, k, v, sizes: list[int], mesh: Mesh, scale: float, fp32: bool, rotate: str) -> torch.Tensor:
    """Softmax attention of local queries over the key/value blocks of every ring member (``sizes[j]`` tokens each)."""
    ring = mesh.ring_degree
    me = mesh.ring_index
    acc = _OnlineSoftmax(q, scale, torch.float32 if fp32 else q.dtype)
    longest = max(sizes)
    kv = torch.stack([_pad_seq(k, longest), _pad_seq(v, longest)]).contiguous()
    if rotate == "allgather":
        blocks = [torch.empty_like(kv) for _ in range(ring)]
        with collective("ring attention all-gather of key/value blocks"):
            dist.all_gather(blocks, kv, group=mesh.ring_group)
        for j, block in enumerate(blocks):
            acc.add(block[0, :, :, : sizes[j]], block[1, :, :, : sizes[j]])
        return acc.result()
    # p2p: pass blocks to the next rank while working on the current one
    send_to, recv_from = mesh.ring_ranks[(me + 1) % ring], mesh.ring_ranks[(me - 1) % ring]
    current, source = kv, me
    for step in range(ring):
        pending = []
        if step < ring - 1:
            incoming = torch.empty_like(kv)
            ops = [dist.P2POp(dist.isend, current, send_to, group=mesh.ring_group),
                   dist.P2POp(dist.irecv, incoming, recv_from, group=mesh.ring_group)]
            with collective("ring attention send/receive of key/value blocks"):
                pending = dist.batch_isend_irecv(ops)
        acc.add(current[0, :, :, : sizes[source]], current[1, :, :, : sizes[source]])
        if pending:
            with collective("ring attention send/receive of key/value blocks"):
                for work in pending:
                    work.wait()
            current, source = incoming, (source - 1) % ring
    return acc.result()


# ----------------------------------------------------------------------------- the attention hook
class ContextParallelAttention:
    """What :meth:`kernel_layers.attention.Attention.attend` calls when the layer's keys are split across ranks.

    ``sizes()`` returns the token count of every rank (flattened grid order) for this layer's sequence,
    read from the current forward's split; ``sizes=None`` means even splits (every rank holds as many
    tokens as this one).
    """

    def __init__(self, name: str, mesh: Mesh, config, sizes):
        self.name, self.mesh, self.config, self._sizes = name, mesh, config, sizes

    def __repr__(self) -> str:
        return (f"ContextParallelAttention({self.name!r}, ulysses={self.mesh.ulysses_degree}, "
                f"ring={self.mesh.ring_degree}, rotate={self.config.rotate_method!r})")

    def __call__(self, attn, query, key, value, attention_mask=None, backend=None, slice_size=None):
        if attention_mask is not None:
            raise ValueError(f"{self.name}: attention masks are not supported under context parallelism "
                             "(the keys of this layer are split across ranks)")
        if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
            raise RuntimeError(f"{self.name}: context parallelism is for inference (its collectives carry no "
                               "gradients); run the model under torch.no_grad() or torch.inference_mode()")
        if getattr(attn, "is_causal", False):
            raise ValueError(f"{self.name}: causal attention is not supported under context parallelism")
        mesh = self.mesh
        sizes = self._sizes() if self._sizes is not None else [query.shape[2]] * mesh.world_size
        if query.shape[2] != sizes[mesh.rank] or key.shape[2] != sizes[mesh.rank]:
            raise ValueError(f"{self.name}: the context-parallel plan expects {sizes[mesh.rank]} tokens on rank "
                             f"{mesh.rank}, got {query.shape[2]} queries and {key.shape[2]} keys; the plan does not "
                             "describe this model's sequence (pass cp_plan=)")
        u = mesh.ulysses_degree
        row = mesh.ring_index * u
        if u > 1:
            local = sizes[row: row + u]
            query, key, value = (seq_to_heads(t, local, mesh.ulysses_group) for t in (query, key, value))
        scale = attn.scale if not getattr(attn, "scale_qk", True) else query.shape[-1] ** -0.5
        if mesh.ring_degree > 1:
            blocks = [sum(sizes[g * u: (g + 1) * u]) for g in range(mesh.ring_degree)]
            out = ring_attention(query, key, value, blocks, mesh, scale, self.config.convert_to_fp32,
                                 self.config.rotate_method).to(query.dtype)
        else:
            out = dispatch_attention(query, key, value, None, scale=scale, backend=backend, slice_size=slice_size,
                                     upcast_attention=attn.upcast_attention, upcast_softmax=attn.upcast_softmax)
        if u > 1:
            out = heads_to_seq(out, sizes[row: row + u], mesh.ulysses_index, mesh.ulysses_group)
        return out
