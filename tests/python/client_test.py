"""Sluice from Python: a client generated from proto/ with grpcio-tools
produces, fetches (one message per record, and stored batches) and
subscribes, then joins a consumer group and commits,
against a running server.

    python -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt
    .venv/bin/python tests/python/client_test.py --broker 127.0.0.1:9400 --proto-dir proto

This is the example to follow for any other language: generate stubs from
proto/sluice/v1/*.proto and call sluice.v1.Admin, sluice.v1.Broker and
sluice.v1.Groups.
"""

import argparse
import os
import struct
import sys
import threading
import uuid

import grpc

import stubs
from google.protobuf import empty_pb2


def generate(proto_dir):
    """The broker and groups modules (server.proto is compiled too: broker
    and groups import nothing from it, but it is part of the API)."""
    pb, rpc, _, _, gpb, grpc_groups = stubs.generate(proto_dir, ("broker", "server", "groups"))
    return pb, rpc, gpb, grpc_groups


def batch_records(data, start):
    """Records of FetchBatchesResponse.batches at or after `start`, as
    (offset, timestamp_ms, key, value, headers), each batch's CRC-32C
    checked: the decoder documented in proto/sluice/v1/broker.proto."""
    pos = 0
    while pos < len(data):
        base, blen = struct.unpack_from(">qi", data, pos)
        magic = data[pos + 16]
        crc, = struct.unpack_from(">I", data, pos + 17)
        end = pos + 12 + blen
        check(magic == 2, f"batch magic {magic}")
        check(crc32c(data[pos + 21:end]) == crc, f"batch at {base} fails its CRC")
        base_ts, = struct.unpack_from(">q", data, pos + 27)
        count, = struct.unpack_from(">i", data, pos + 57)
        p = pos + 61
        for _ in range(count):
            _, p = varint(data, p)
            p += 1
            ts, p = varint(data, p)
            delta, p = varint(data, p)
            key, p = blob(data, p)
            value, p = blob(data, p)
            n, p = varint(data, p)
            headers = []
            for _ in range(n):
                k, p = blob(data, p)
                v, p = blob(data, p)
                headers.append((k.decode(), v))
            if base + delta >= start:
                yield base + delta, base_ts + ts, key, value, headers
        pos = end


def varint(data, p):
    shift = result = 0
    while True:
        b = data[p]
        p += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return (result >> 1) ^ -(result & 1), p


def blob(data, p):
    n, p = varint(data, p)
    return (None, p) if n < 0 else (bytes(data[p:p + n]), p + n)


_CRC32C = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C.append(_c)


def crc32c(data):
    c = 0xFFFFFFFF
    for b in data:
        c = _CRC32C[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="127.0.0.1:9400")
    ap.add_argument("--proto-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "proto"))
    args = ap.parse_args()
    pb, rpc, gpb, grpc_groups = generate(args.proto_dir)

    channel = grpc.insecure_channel(args.broker.removeprefix("http://"))
    admin = rpc.AdminStub(channel)
    broker = rpc.BrokerStub(channel)
    topic = "py-" + uuid.uuid4().hex[:8]

    admin.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=2))
    listed = [t.name for t in admin.ListTopics(pb.ListTopicsRequest()).topics]
    check(topic in listed, f"{topic} listed in {listed}")

    # Produce with an explicit partition, a key, headers and acks=ALL.
    reply = broker.Produce(pb.ProduceRequest(
        topic=topic,
        partition=1,
        acks=pb.ACKS_ALL,
        records=[
            pb.ProduceRecord(key=b"k1", value=b"hello", headers=[pb.Header(key="h", value=b"\x00\x01")]),
            pb.ProduceRecord(value=b"world", timestamp_ms=1_700_000_000_000),
        ],
    ))
    check(not reply.record_errors, f"no record errors: {reply.record_errors}")
    check(reply.partitions[0].partition == 1 and reply.partitions[0].base_offset == 0,
          f"appended at 1/0: {reply}")

    fetched = broker.Fetch(pb.FetchRequest(topic=topic, partition=1, offset=0))
    values = [r.value for r in fetched.records]
    check(values == [b"hello", b"world"], f"fetched values {values}")
    first = fetched.records[0]
    check(first.HasField("key") and first.key == b"k1", "key round-trips")
    check(list((h.key, h.value) for h in first.headers) == [("h", b"\x00\x01")], "headers round-trip")
    check(fetched.records[1].timestamp_ms == 1_700_000_000_000, "explicit timestamp kept")
    check(not fetched.records[1].HasField("key"), "null key stays null")
    check(fetched.high_watermark == 2, f"high watermark {fetched.high_watermark}")

    # The same records as stored batches (FetchBatches), decoded here with
    # the decoder the proto documents.
    raw = broker.FetchBatches(pb.FetchBatchesRequest(topic=topic, partition=1, offset=1))
    check(raw.next_offset == 2 and raw.high_watermark == 2, f"batch read offsets {raw.next_offset}")
    decoded = list(batch_records(raw.batches, 1))
    expected = [(r.offset, r.timestamp_ms, r.key if r.HasField("key") else None,
                 r.value if r.HasField("value") else None,
                 [(h.key, h.value if h.HasField("value") else None) for h in r.headers])
                for r in fetched.records[1:]]
    check(decoded == expected, f"batch records {decoded} == fetched {expected}")
    everything = list(batch_records(raw.batches, 0))
    check([r[3] for r in everything] == [b"hello", b"world"], f"from offset 0: {everything}")

    # Subscribe from the earliest record, then see a live one arrive.
    stream = broker.Subscribe(pb.SubscribeRequest(
        topic=topic, partition=1, start=pb.Position(earliest=empty_pb2.Empty())))
    seen = []
    done = threading.Event()

    def read():
        try:
            for msg in stream:
                seen.extend(r.value for r in msg.records)
                if len(seen) >= 3:
                    done.set()
                    return
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.CANCELLED:
                raise

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    broker.Produce(pb.ProduceRequest(topic=topic, partition=1, records=[pb.ProduceRecord(value=b"live")]))
    check(done.wait(30), f"subscription saw history and the live record: {seen}")
    stream.cancel()
    check(seen == [b"hello", b"world", b"live"], f"subscribed values {seen}")

    # Errors arrive as precise status codes.
    try:
        broker.Fetch(pb.FetchRequest(topic="no-such-topic", partition=0, offset=0))
        check(False, "fetch of an unknown topic fails")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.NOT_FOUND, f"NOT_FOUND, got {e.code()}")
    try:
        broker.Fetch(pb.FetchRequest(topic=topic, partition=1, offset=99))
        check(False, "fetch past the end fails")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.OUT_OF_RANGE, f"OUT_OF_RANGE, got {e.code()}")
        check("[0, 3]" in e.details(), f"range in message: {e.details()}")

    # A consumer group member with no client library: join, confirm the
    # assignment, read from the committed offset, commit, leave.
    groups = grpc_groups.GroupsStub(channel)
    group_admin = grpc_groups.GroupAdminStub(channel)
    group = "py-group-" + uuid.uuid4().hex[:8]
    joined = groups.Heartbeat(gpb.HeartbeatRequest(group=group, member_epoch=0, topics=[topic],
                                                   client_id="python-test"))
    check(joined.member_id and joined.member_epoch > 0, f"joined: {joined}")
    owned = {(t.topic, p) for t in joined.assignment for p in t.partitions}
    check(owned == {(topic, 0), (topic, 1)}, f"sole member owns both partitions: {owned}")
    beat = groups.Heartbeat(gpb.HeartbeatRequest(group=group, member_id=joined.member_id,
                                                 member_epoch=joined.member_epoch, topics=[topic]))
    check(beat.member_epoch == joined.member_epoch and beat.heartbeat_interval_ms > 0, f"confirmed: {beat}")
    committed = groups.FetchOffsets(gpb.FetchOffsetsRequest(group=group)).offsets
    check(len(committed) == 0, f"nothing committed yet: {committed}")
    records = broker.Fetch(pb.FetchRequest(topic=topic, partition=1, offset=0)).records
    groups.CommitOffsets(gpb.CommitOffsetsRequest(
        group=group, member_id=joined.member_id, member_epoch=beat.member_epoch,
        offsets=[gpb.OffsetCommit(topic=topic, partition=1, offset=records[-1].offset + 1, metadata="py")]))
    committed = groups.FetchOffsets(gpb.FetchOffsetsRequest(group=group, topics=[topic])).offsets
    check([(c.partition, c.offset, c.metadata) for c in committed] == [(1, 3, "py")], f"committed {committed}")
    try:
        groups.CommitOffsets(gpb.CommitOffsetsRequest(
            group=group, member_id=joined.member_id, member_epoch=beat.member_epoch + 100,
            offsets=[gpb.OffsetCommit(topic=topic, partition=1, offset=0)]))
        check(False, "a commit with a wrong epoch is fenced")
    except grpc.RpcError as e:
        check(e.code() == grpc.StatusCode.ABORTED, f"ABORTED, got {e.code()}")
    described = group_admin.DescribeGroup(gpb.DescribeGroupRequest(group=group))
    check(described.state == gpb.GROUP_STATE_STABLE and len(described.members) == 1, f"described {described}")
    lag = {p.partition: p.lag for p in described.partitions}
    check(lag == {0: 0, 1: 0}, f"lag {lag}")
    groups.Heartbeat(gpb.HeartbeatRequest(group=group, member_id=joined.member_id, member_epoch=-1))
    described = group_admin.DescribeGroup(gpb.DescribeGroupRequest(group=group))
    check(described.state == gpb.GROUP_STATE_EMPTY, f"empty after leaving: {described.state}")
    group_admin.DeleteGroup(gpb.DeleteGroupRequest(group=group))

    admin.DeleteTopic(pb.DeleteTopicRequest(name=topic))
    print("ok")


if __name__ == "__main__":
    main()
