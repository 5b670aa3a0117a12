"""A thin client of a Sluice cluster: plain generated stubs and one broker
address. It creates a replicated topic, produces keyed records that land on
partitions led by other brokers, reads every partition back and subscribes,
all through the one broker (which forwards), then shows with Metadata that
the partitions are led by several brokers.

    .venv/bin/python tests/python/thin_cluster_client.py --broker 127.0.0.1:9400 --proto-dir proto
"""

import argparse
import os
import sys
import uuid

import grpc
from google.protobuf import empty_pb2

import stubs


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="127.0.0.1:9400")
    ap.add_argument("--proto-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "proto"))
    args = ap.parse_args()
    pb, rpc, cpb, crpc = stubs.generate(args.proto_dir, ("broker", "cluster"))

    channel = grpc.insecure_channel(args.broker.removeprefix("http://"))
    admin = rpc.AdminStub(channel)
    broker = rpc.BrokerStub(channel)
    cluster = crpc.ClusterStub(channel)
    topic = "thin-" + uuid.uuid4().hex[:8]

    created = admin.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=6, replication_factor=3))
    check(len(created.topic.partitions) == 6, "six partitions")
    check(all(len(p.replicas) == 3 for p in created.topic.partitions), "three replicas each")

    meta = cluster.Metadata(cpb.MetadataRequest(topics=[topic]))
    leaders = {p.partition: p.leader for p in meta.topics[0].partitions}
    check(len(set(leaders.values())) == len(meta.brokers), f"leaders spread over the brokers: {leaders}")
    check(meta.controller >= 0, "a controller is known")

    records = [pb.ProduceRecord(key=f"key-{i}".encode(), value=f"value-{i}".encode()) for i in range(120)]
    reply = broker.Produce(pb.ProduceRequest(topic=topic, acks=pb.ACKS_ALL, records=records))
    check(not reply.record_errors, f"no record errors: {reply.record_errors}")
    check(sum(p.record_count for p in reply.partitions) == 120, "all 120 appended")
    check(len({p.partition for p in reply.partitions}) == 6, "spread over the six partitions")

    seen = set()
    for partition in range(6):
        r = broker.Fetch(pb.FetchRequest(topic=topic, partition=partition, offset=0, max_records=1000))
        for rec in r.records:
            seen.add(rec.value.decode())
    check(seen == {f"value-{i}" for i in range(120)}, f"read back {len(seen)} of 120")

    offsets = broker.ListOffsets(pb.ListOffsetsRequest(topic=topic))
    check(sum(p.latest_offset for p in offsets.partitions) == 120, "list offsets from every leader")

    # A subscription through this broker, to a partition led elsewhere.
    me = meta.answered_by
    remote = next(p for p, l in leaders.items() if l != me)
    stream = broker.Subscribe(pb.SubscribeRequest(
        topic=topic, partition=remote, start=pb.Position(earliest=empty_pb2.Empty())
    ))
    first = next(iter(stream))
    check(len(first.records) > 0, "the subscription to a remote partition delivers")
    stream.cancel()

    described = admin.DescribeTopic(pb.DescribeTopicRequest(name=topic)).topic
    check(sum(p.high_watermark for p in described.partitions) == 120, "describe sums every leader's partitions")
    print("ok")


if __name__ == "__main__":
    main()
