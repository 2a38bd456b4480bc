"""A compact encoding of fine-grained (single-weight) sparse weights, and its exact size.

Fine-grained pruning leaves the architecture and the dense MACs unchanged; what shrinks is what has to be
stored. :func:`encode` turns a state dict into tensors that hold, for every weight tensor with zeros worth
skipping, a packed bitmap of its non-zero positions (1 bit per element) and the non-zero values in order;
every other tensor is kept as it is. :func:`decode` inverts it exactly (bit for bit). :func:`encoded_bytes`
is the payload size, the number a summary reports as the model size (the safetensors header adds a few
hundred bytes on disk).

Contract: ``decode(encode(sd)) == sd`` exactly, same dtypes and shapes; a tensor is encoded only when the
encoding is smaller than the dense tensor (``numel/8 + nnz·itemsize < numel·itemsize``).

Layout of an encoded tensor ``name``: ``name.__sparse_bits`` (uint8, packed little-endian bit order, the
positions of the non-zeros in row-major order), ``name.__sparse_values`` (the non-zeros, original dtype) and
``name.__sparse_shape`` (int64, the dense shape).
"""
from __future__ import annotations

import os
from typing import Mapping

import torch

from .errors import CheckpointError

_BITS, _VALUES, _SHAPE = ".__sparse_bits", ".__sparse_values", ".__sparse_shape"
_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def _pack(mask: torch.Tensor) -> torch.Tensor:
    flat = mask.flatten().to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    w = torch.tensor(_WEIGHTS, dtype=torch.uint8)
    return (flat.view(-1, 8) * w).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def _unpack(bits: torch.Tensor, n: int) -> torch.Tensor:
    w = torch.tensor(_WEIGHTS, dtype=torch.uint8)
    return ((bits.view(-1, 1) & w) != 0).flatten()[:n]


def dense_bytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def sparse_bytes(t: torch.Tensor) -> int:
    """Bytes of ``t`` in the sparse layout (bitmap + non-zero values + shape)."""
    return (t.numel() + 7) // 8 + int(torch.count_nonzero(t)) * t.element_size() + 8 * t.dim()


def encode(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Encode every floating-point tensor of ``state`` whose sparse layout is smaller (see the module doc)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in state.items():
        if any(name.endswith(s) for s in (_BITS, _VALUES, _SHAPE)):
            raise CheckpointError(f"sparse.encode: tensor name {name!r} uses a reserved suffix")
        t = t.detach().cpu().contiguous()
        if t.is_floating_point() and t.numel() > 0 and sparse_bytes(t) < dense_bytes(t):
            nz = t != 0
            out[name + _BITS] = _pack(nz)
            out[name + _VALUES] = t[nz].clone()
            out[name + _SHAPE] = torch.tensor(list(t.shape), dtype=torch.int64)
        else:
            out[name] = t
    return out


def decode(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Invert :func:`encode`; a malformed entry raises :class:`CheckpointError` naming the tensor."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if name.endswith(_VALUES) or name.endswith(_SHAPE):
            continue
        if not name.endswith(_BITS):
            out[name] = t
            continue
        base = name[: -len(_BITS)]
        values, shape = tensors.get(base + _VALUES), tensors.get(base + _SHAPE)
        if values is None or shape is None:
            raise CheckpointError(f"sparse tensor {base!r}: missing its values or shape entry")
        dims = [int(v) for v in shape.tolist()]
        if any(d < 0 for d in dims):
            raise CheckpointError(f"sparse tensor {base!r}: negative dimension in shape {dims}")
        n = 1
        for d in dims:
            n *= d
        if t.dtype != torch.uint8 or t.numel() != (n + 7) // 8:
            raise CheckpointError(f"sparse tensor {base!r}: bitmap of {t.numel()} bytes does not fit shape {dims}")
        nz = _unpack(t, n)
        if int(nz.sum()) != values.numel():
            raise CheckpointError(f"sparse tensor {base!r}: bitmap marks {int(nz.sum())} non-zeros but "
                                  f"{values.numel()} values are stored")
        dense = torch.zeros(n, dtype=values.dtype)
        dense[nz] = values
        out[base] = dense.view(dims)
    return out


def encoded_bytes(tensors: Mapping[str, torch.Tensor]) -> int:
    """Payload bytes of an encoded (or plain) tensor dict."""
    return sum(dense_bytes(t) for t in tensors.values())


def save_sparse(state: Mapping[str, torch.Tensor], path: str | os.PathLike) -> int:
    """Encode ``state`` and write it as safetensors (atomically); returns the payload bytes."""
    from safetensors.torch import save

    from .ioutil import atomic_write_bytes

    enc = encode(state)
    atomic_write_bytes(path, save(enc))
    return encoded_bytes(enc)


def load_sparse(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`save_sparse` back to a dense state dict (no pickle involved)."""
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for truncated / corrupt files
        raise CheckpointError(f"{path}: not a readable safetensors file ({type(exc).__name__}: {exc})") from exc
    return {k: v.clone() for k, v in decode(tensors).items()}
