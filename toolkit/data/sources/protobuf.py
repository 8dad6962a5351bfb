"""The protobuf wire format of `tf.train.Example`, decoded and encoded without TensorFlow or protobuf.

Example -> Features -> map<string, Feature> -> {BytesList, FloatList, Int64List}; unknown fields are skipped,
packed and unpacked repeated numbers are both accepted, and a later oneof member replaces an earlier one.
"""

from __future__ import annotations

import struct
from typing import Iterator

import numpy as np

FeatureValues = list[bytes] | list[float] | list[int]


class ProtobufError(ValueError):
    """A byte string is not a well-formed tf.train.Example (callers turn it into DataError with file/record)."""




def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    for i in range(10):
        if pos + i >= len(buf):
            raise ProtobufError(f"truncated varint at byte {pos}")
        b = buf[pos + i]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & 0xFFFFFFFFFFFFFFFF, pos + i + 1
        shift += 7
    raise ProtobufError(f"varint longer than 10 bytes at byte {pos}")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Yield (field number, wire type, value) of one message: an int for varints, a view for the others.

    Groups (wire types 3/4, deprecated and unused by tf.Example) are skipped whole.
    """
    pos, end = 0, len(buf)
    while pos < end:
        tag_pos = pos
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ProtobufError(f"field number 0 at byte {tag_pos}")
        if wire == 0:
            value, pos = _varint(buf, pos)
            yield field, wire, value
        elif wire in (1, 2, 5):
            if wire == 2:
                n, pos = _varint(buf, pos)
            else:
                n = 8 if wire == 1 else 4
            if pos + n > end:
                raise ProtobufError(f"field {field} at byte {tag_pos} runs past the end ({n} bytes)")
            yield field, wire, buf[pos:pos + n]
            pos += n
        elif wire == 3:
            pos = _skip_group(buf, pos, field, tag_pos)
        else:
            raise ProtobufError(f"invalid wire type {wire} at byte {tag_pos}")


def _skip_group(buf: memoryview, pos: int, field: int, start: int) -> int:
    """Position after the END_GROUP matching a START_GROUP of `field` (nested groups allowed)."""
    depth = [field]
    while depth:
        if pos >= len(buf):
            raise ProtobufError(f"unterminated group (field {field}) at byte {start}")
        tag, pos = _varint(buf, pos)
        f, wire = tag >> 3, tag & 7
        if wire == 0:
            _, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            n = 8 if wire == 1 else 4 if wire == 5 else None
            if n is None:
                n, pos = _varint(buf, pos)
            pos += n
        elif wire == 3:
            depth.append(f)
        elif wire == 4 and f == depth[-1]:
            depth.pop()
        else:
            raise ProtobufError(f"bad wire type {wire} inside group at byte {start}")
    if pos > len(buf):
        raise ProtobufError(f"group (field {field}) at byte {start} runs past the end")
    return pos


def _expect(wire: int, wanted: int, what: str) -> None:
    if wire != wanted:
        raise ProtobufError(f"{what} has wire type {wire}, expected {wanted}")


def _parse_feature(buf: memoryview) -> FeatureValues:
    """Feature = oneof {1: BytesList, 2: FloatList, 3: Int64List}; each list is `repeated` field 1."""
    kind, values = 0, []
    for field, wire, value in _fields(buf):
        if field not in (1, 2, 3):
            continue
        _expect(wire, 2, f"Feature field {field}")
        if field != kind:  # a later oneof member replaces an earlier one; the same member merges
            kind, values = field, []
        for f, w, v in _fields(value):
            if f != 1:
                continue
            if field == 1:
                _expect(w, 2, "BytesList value")
                values.append(bytes(v))
            elif field == 2 and w == 5:
                values.append(struct.unpack("<f", v)[0])
            elif field == 2:
                _expect(w, 2, "FloatList value")
                if len(v) % 4:
                    raise ProtobufError(f"packed FloatList of {len(v)} bytes is not a multiple of 4")
                values.extend(np.frombuffer(v, dtype="<f4").tolist())
            elif w == 0:
                values.append(v - (1 << 64) if v >= 1 << 63 else v)
            else:
                _expect(w, 2, "Int64List value")
                pos = 0
                while pos < len(v):
                    n, pos = _varint(v, pos)
                    values.append(n - (1 << 64) if n >= 1 << 63 else n)
    return values


def parse_example(data: bytes) -> dict[str, FeatureValues]:
    """Decode a serialized tf.train.Example into {feature name: list of bytes / floats / ints}."""
    out: dict[str, FeatureValues] = {}
    for field, wire, features in _fields(memoryview(data)):
        if field != 1:
            continue
        _expect(wire, 2, "Example.features")
        for f, w, entry in _fields(features):
            if f != 1:
                continue
            _expect(w, 2, "Features.feature entry")
            key, value = "", []
            for ef, ew, ev in _fields(entry):
                if ef == 1:
                    _expect(ew, 2, "feature name")
                    try:
                        key = bytes(ev).decode("utf-8")
                    except UnicodeDecodeError as e:
                        raise ProtobufError(f"feature name is not UTF-8 ({e})") from None
                elif ef == 2:
                    _expect(ew, 2, f"feature {key!r} value")
                    value = _parse_feature(ev)
            out[key] = value
    return out


# ------------------------------------------------------------------------------------- protobuf encoding


def _enc_varint(n: int) -> bytes:
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _enc_field(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _enc_varint(field << 3 | 2) + _enc_varint(len(payload)) + payload


def _enc_feature(name: str, values) -> bytes:
    items = list(values.ravel()) if isinstance(values, np.ndarray) else list(values)
    if all(isinstance(v, (bytes, bytearray, memoryview)) for v in items) and items:
        body = _enc_field(1, b"".join(_enc_field(1, bytes(v)) for v in items))
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in items) and items:
        body = _enc_field(3, _enc_field(1, b"".join(_enc_varint(int(v)) for v in items)))
    elif all(isinstance(v, (float, int, np.floating, np.integer)) for v in items):
        body = _enc_field(2, _enc_field(1, np.asarray(items, dtype="<f4").tobytes()))
    else:
        raise ValueError(f"feature {name!r}: values must be all bytes, all ints or all floats")
    return body


def encode_example(features: dict[str, FeatureValues | np.ndarray]) -> bytes:
    """Serialize {name: list of bytes / ints / floats} as a tf.train.Example (numeric lists packed).

    An empty list is written as an empty FloatList.
    """
    entries = b"".join(_enc_field(1, _enc_field(1, name.encode("utf-8")) + _enc_field(2, _enc_feature(name, v)))
                       for name, v in features.items())
    return _enc_field(1, entries)
