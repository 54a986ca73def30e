"""Read an ONNX file's graph (nodes, their attributes, initializer tensors) with numpy alone.

The `onnx` package is a training extra, and importing it takes ~0.9 s; inference only needs the weights of a
model it already runs (`engines/sparse/click.py`), which this reads straight from the protobuf wire format
(https://protobuf.dev/programming-guides/encoding/, fields as numbered in onnx.proto). Tensors stored outside the
file (external data) are not supported: the shipped models keep theirs inside.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Graph", "Node", "read_graph"]

# onnx TensorProto.DataType -> numpy dtype
_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32, 7: np.int64,
           9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


@dataclass
class Node:
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attributes: dict = field(default_factory=dict)   # name -> int, float, bytes, or list of ints / floats


@dataclass
class Graph:
    nodes: list[Node]
    initializers: dict[str, np.ndarray]
    inputs: list[str]      # graph input names, in order (initializers excluded)
    outputs: list[str]


def read_graph(path: str | Path) -> Graph:
    """The main graph of the ONNX model at `path`. Raises ValueError on a file that is not one."""
    data = Path(path).read_bytes()
    graph = None
    for num, _, value in _fields(data):
        if num == 7:  # ModelProto.graph
            graph = value
    if graph is None:
        raise ValueError(f"{Path(path).name} holds no ONNX graph")
    return _graph(graph)


def _graph(buf: bytes) -> Graph:
    nodes, inits, inputs, outputs = [], {}, [], []
    for num, _, value in _fields(buf):
        if num == 1:
            nodes.append(_node(value))
        elif num == 5:
            name, array = _tensor(value)
            inits[name] = array
        elif num == 11:
            inputs.append(_value_info_name(value))
        elif num == 12:
            outputs.append(_value_info_name(value))
    return Graph(nodes, inits, [n for n in inputs if n not in inits], outputs)


def _node(buf: bytes) -> Node:
    node = Node("", [], [])
    for num, _, value in _fields(buf):
        if num == 1:
            node.inputs.append(value.decode())
        elif num == 2:
            node.outputs.append(value.decode())
        elif num == 4:
            node.op_type = value.decode()
        elif num == 5:
            name, attr = _attribute(value)
            node.attributes[name] = attr
    return node


def _attribute(buf: bytes):
    name, value, ints, floats = "", None, [], []
    for num, wire, v in _fields(buf):
        if num == 1:
            name = v.decode()
        elif num == 2:
            value = struct.unpack("<f", v)[0]
        elif num == 3:
            value = _signed(v)
        elif num == 4:
            value = v
        elif num == 7:
            floats += list(np.frombuffer(v, "<f4")) if wire == 2 else [struct.unpack("<f", v)[0]]
        elif num == 8:
            ints += [_signed(x) for x in _varints(v)] if wire == 2 else [_signed(v)]
    if value is None:
        value = ints or floats or None
    return name, value


def _tensor(buf: bytes) -> tuple[str, np.ndarray]:
    dims, dtype, name, raw = [], None, "", None
    typed = {4: [], 5: [], 7: [], 10: [], 11: []}  # float_data, int32_data, int64_data, double_data, uint64_data
    for num, wire, v in _fields(buf):
        if num == 1:
            dims += [_signed(x) for x in _varints(v)] if wire == 2 else [_signed(v)]
        elif num == 2:
            dtype = v
        elif num == 8:
            name = v.decode()
        elif num == 9:
            raw = v
        elif num == 14 and v == 1:
            raise ValueError(f"tensor {name or '?'} is stored outside the ONNX file (external data)")
        elif num in typed:
            if num in (4, 10):
                fmt = "<f4" if num == 4 else "<f8"
                typed[num].append(np.frombuffer(v, fmt) if wire == 2 else np.frombuffer(v, fmt)[:1])
            else:
                typed[num].append(np.array([_signed(x) if num != 11 else x for x in
                                            (_varints(v) if wire == 2 else [v])], dtype=np.int64))
    if dtype not in _DTYPES:
        raise ValueError(f"tensor {name or '?'} has an ONNX data type ({dtype}) this reader does not know")
    np_type = np.dtype(_DTYPES[dtype]).newbyteorder("<")
    if raw is not None:
        array = np.frombuffer(raw, np_type).astype(np_type.newbyteorder("="))
    else:
        source = next((np.concatenate(parts) for parts in typed.values() if parts), np.zeros(0))
        if dtype == 10:  # float16 values travel as their bit patterns in int32_data
            array = source.astype(np.uint16).view(np.float16)
        else:
            array = source.astype(np_type.newbyteorder("="))
    return name, array.reshape(dims)


def _value_info_name(buf: bytes) -> str:
    for num, _, v in _fields(buf):
        if num == 1:
            return v.decode()
    return ""


# ---- the wire format -----------------------------------------------------------------------------------------
def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated ONNX file")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _varints(buf: bytes) -> list[int]:
    out, pos = [], 0
    while pos < len(buf):
        v, pos = _varint(buf, pos)
        out.append(v)
    return out


def _signed(v: int) -> int:
    """An int64 field's value (negative numbers are encoded as 10-byte two's complement varints)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _fields(buf: bytes):
    """(field number, wire type, value) of each field of one message: value is an int (varint), bytes
    (length-delimited) or the 4 / 8 raw bytes of a fixed32 / fixed64."""
    pos, n = 0, len(buf)
    while pos < n:
        key, pos = _varint(buf, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 2:
            length, pos = _varint(buf, pos)
            if pos + length > n:
                raise ValueError("truncated ONNX file")
            value = buf[pos:pos + length]
            pos += length
        elif wire in (1, 5):
            width = 4 if wire == 5 else 8
            if pos + width > n:
                raise ValueError("truncated ONNX file")
            value = buf[pos:pos + width]
            pos += width
        else:
            raise ValueError(f"not an ONNX file (protobuf wire type {wire})")
        yield num, wire, value
