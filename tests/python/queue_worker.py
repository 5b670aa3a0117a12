"""A work-queue worker in Python, with a client generated from proto/:
Consume stream, ACCEPT / RELEASE / REJECT, and a worker process killed
mid-task whose record is delivered again.

    .venv/bin/python tests/python/queue_worker.py --broker 127.0.0.1:9400 --proto-dir proto

(`hold` mode is the worker that gets killed: it takes one record, says
so, and never acknowledges it.)
"""

import argparse
import os
import queue
import subprocess
import sys
import uuid

import grpc

import stubs


def generate(proto_dir):
    """The broker and queues modules."""
    return stubs.generate(proto_dir, ("broker", "queues"))


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


class Worker:
    """One Consume stream: requests go through a queue the stream reads."""

    def __init__(self, qpb, qrpc, channel, group, topic, prefetch=10):
        self.qpb = qpb
        self.requests = queue.Queue()
        self.requests.put(qpb.ConsumeRequest(open=qpb.OpenQueue(group=group, topic=topic, prefetch=prefetch)))
        self.responses = qrpc.QueuesStub(channel).Consume(iter(self.requests.get, None), timeout=60)
        first = next(self.responses)
        self.member_id = first.member_id
        self.pending = list(first.deliveries)
        self.unconfirmed = 0

    def _receive(self):
        m = next(self.responses)
        self.pending.extend(m.deliveries)
        if m.HasField("ack_result"):
            self.unconfirmed -= 1
            check(not m.ack_result.refused, f"acks refused: {m.ack_result.refused}")

    def next(self):
        while not self.pending:
            self._receive()
        return self.pending.pop(0)

    def ack(self, delivery, kind, reason=""):
        self.unconfirmed += 1
        self.requests.put(self.qpb.ConsumeRequest(acks=self.qpb.AckBatch(acks=[
            self.qpb.Ack(delivery_id=delivery.delivery_id, type=kind, reason=reason)
        ])))

    def confirm(self):
        """Waits until the broker has confirmed every ack sent."""
        while self.unconfirmed > 0:
            self._receive()

    def close(self):
        self.requests.put(None)
        self.responses.cancel()


def hold(args):
    """Takes one record, prints it, and waits to be killed."""
    _, _, qpb, qrpc = generate(args.proto_dir)
    channel = grpc.insecure_channel(args.broker)
    w = Worker(qpb, qrpc, channel, args.group, args.topic, prefetch=1)
    d = w.next()
    print(f"holding {d.record.value.decode()} {d.delivery_count}", flush=True)
    sys.stdin.read()


def run(args):
    pb, rpc, qpb, qrpc = generate(args.proto_dir)
    channel = grpc.insecure_channel(args.broker)
    admin = rpc.AdminStub(channel)
    broker = rpc.BrokerStub(channel)
    queues = qrpc.QueuesStub(channel)
    topic = "pyq-" + uuid.uuid4().hex[:8]
    group = "pyg-" + uuid.uuid4().hex[:8]
    admin.CreateTopic(pb.CreateTopicRequest(name=topic, partitions=2))
    values = [f"ok-{i}" for i in range(5)] + ["retry-0", "poison-0"]
    reply = broker.Produce(pb.ProduceRequest(
        topic=topic, records=[pb.ProduceRecord(value=v.encode()) for v in values]))
    check(not reply.record_errors, f"produced: {reply.record_errors}")

    # ACCEPT the good ones, RELEASE "retry" once, REJECT "poison".
    w = Worker(qpb, qrpc, channel, group, topic)
    accepted, released, rejected = set(), 0, set()
    while len(accepted) < 6 or not rejected:
        d = w.next()
        v = d.record.value.decode()
        if v.startswith("retry") and d.delivery_count == 1:
            released += 1
            w.ack(d, qpb.ACK_TYPE_RELEASE, "try again")
        elif v.startswith("poison"):
            rejected.add(v)
            w.ack(d, qpb.ACK_TYPE_REJECT, "cannot parse")
        else:
            check(v not in accepted, f"{v} delivered again after its ACCEPT")
            accepted.add(v)
            w.ack(d, qpb.ACK_TYPE_ACCEPT)
    check(released == 1, f"one release, got {released}")
    check(accepted == set(values) - {"poison-0"}, f"accepted {sorted(accepted)}")
    w.confirm()
    w.close()
    desc = queues.DescribeQueue(qpb.DescribeQueueRequest(group=group))
    check(sum(p.accepted for p in desc.partitions) == 6, f"accepted counts {desc}")
    check(sum(p.rejected for p in desc.partitions) == 1, f"rejected counts {desc}")

    # A worker process killed mid-task: its record comes back.
    broker.Produce(pb.ProduceRequest(topic=topic, records=[pb.ProduceRecord(value=b"task-1")]))
    victim = subprocess.Popen(
        [sys.executable, __file__, "--broker", args.broker, "--proto-dir", args.proto_dir,
         "--group", group, "--topic", topic, "hold"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    line = victim.stdout.readline().strip()
    check(line == "holding task-1 1", f"the victim took the task: {line!r}")
    victim.kill()
    victim.wait()
    w = Worker(qpb, qrpc, channel, group, topic)
    d = w.next()
    check(d.record.value == b"task-1", f"redelivered {d.record.value!r}")
    check(d.delivery_count == 2, f"delivery count {d.delivery_count}")
    w.ack(d, qpb.ACK_TYPE_ACCEPT)
    w.confirm()
    w.close()
    print("ok")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", default="127.0.0.1:9400")
    ap.add_argument("--proto-dir", default=os.path.join(os.path.dirname(__file__), "..", "..", "proto"))
    ap.add_argument("--group")
    ap.add_argument("--topic")
    ap.add_argument("mode", nargs="?", default="run", choices=["run", "hold"])
    args = ap.parse_args()
    args.broker = args.broker.removeprefix("http://")
    if args.mode == "hold":
        hold(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
