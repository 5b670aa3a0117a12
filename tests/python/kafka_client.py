"""Unchanged Kafka clients in Python (confluent-kafka, librdkafka inside)
against Sluice's Kafka listener: AdminClient create, describe and delete
topics; an idempotent acks=all producer; a group of three consumers of the
classic protocol, one SIGKILLed mid-stream (its partitions move, nothing is
lost, duplicates only after its last commit); auto commits.

    .venv/bin/python tests/python/kafka_client.py --bootstrap 127.0.0.1:9092

(`member` mode is one group member, run as a child process.)
"""

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewPartitions, NewTopic


def check(cond, what):
    if not cond:
        sys.exit(f"FAILED: {what}")


def wait_for(futures, what):
    for name, f in futures.items():
        try:
            f.result(timeout=30)
        except Exception as e:  # noqa: BLE001 - reported as a failure
            sys.exit(f"FAILED: {what} {name}: {e}")


def admin_checks(bootstrap):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = f"py-admin-{uuid.uuid4().hex[:8]}"
    wait_for(
        admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1,
                                      config={"retention.ms": "3600000"})]),
        "create_topics",
    )
    meta = admin.list_topics(timeout=10)
    check(name in meta.topics and len(meta.topics[name].partitions) == 2, "created topic listed with 2 partitions")
    res = ConfigResource(ConfigResource.Type.TOPIC, name)
    configs = admin.describe_configs([res])[res].result(timeout=10)
    check(configs["retention.ms"].value == "3600000", f"retention.ms described: {configs['retention.ms'].value}")
    wait_for(admin.create_partitions([NewPartitions(name, 4)]), "create_partitions")
    meta = admin.list_topics(topic=name, timeout=10)
    check(len(meta.topics[name].partitions) == 4, "partitions added")
    dup = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name]
    try:
        dup.result(timeout=10)
        sys.exit("FAILED: creating an existing topic succeeded")
    except Exception as e:  # noqa: BLE001
        check(e.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, f"duplicate create: {e}")
    wait_for(admin.delete_topics([name]), "delete_topics")
    deadline = time.time() + 10
    while name in admin.list_topics(timeout=10).topics:
        check(time.time() < deadline, "deleted topic disappears")
        time.sleep(0.1)
    return admin


def produce(bootstrap, topic, start, count):
    """Idempotent, acks=all; returns the acknowledged (partition, offset) per value."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                  "linger.ms": 5})
    acked = {}
    errors = []

    def done(err, msg):
        if err is not None:
            errors.append(err)
        else:
            acked[msg.value().decode()] = (msg.partition(), msg.offset())

    for i in range(start, start + count):
        p.produce(topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
                  headers=[("n", str(i).encode())], on_delivery=done)
        p.poll(0)
    check(p.flush(30) == 0, "producer flushed everything")
    check(not errors, f"no delivery errors: {errors[:3]}")
    check(len(acked) == count, f"{count} acknowledged, got {len(acked)}")
    return acked


def member(args):
    """One group member: logs every record and every commit to --out."""
    c = Consumer({
        "bootstrap.servers": args.bootstrap,
        "group.id": args.group,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "session.timeout.ms": 6000,
        "heartbeat.interval.ms": 500,
        "client.id": f"py-member-{args.index}",
    })
    out = open(args.out, "a", buffering=1)

    def on_assign(_c, parts):
        out.write("assigned " + " ".join(str(p.partition) for p in parts) + "\n")

    c.subscribe([args.topic], on_assign=on_assign)
    since_commit = 0
    idle_since = time.time()
    while True:
        msg = c.poll(0.2)
        if msg is None:
            if os.path.exists(args.stop) and time.time() - idle_since > 1.5:
                break
            continue
        if msg.error():
            out.write(f"error {msg.error()}\n")
            continue
        idle_since = time.time()
        out.write(f"record {msg.partition()} {msg.offset()} {msg.value().decode()} {time.monotonic()}\n")
        since_commit += 1
        if since_commit >= 10:
            try:
                for tp in c.commit(asynchronous=False):
                    out.write(f"commit {tp.partition} {tp.offset} {time.monotonic()}\n")
            except Exception as e:  # noqa: BLE001 - a rebalance may refuse one
                out.write(f"commit-failed {e}\n")
            since_commit = 0
    try:
        for tp in c.commit(asynchronous=False):
            out.write(f"commit {tp.partition} {tp.offset} {time.monotonic()}\n")
    except Exception as e:  # noqa: BLE001
        out.write(f"commit-failed {e}\n")
    c.close()


def read_log(path):
    """(partition, offset, value, time) records, (partition, offset, time)
    commits, and assignments, from one member's log."""
    records, commits, assigned = [], [], []
    if not os.path.exists(path):
        return records, commits, assigned
    with open(path) as f:
        for line in f:
            parts = line.split()
            if not parts or not line.endswith("\n"):
                continue
            if parts[0] == "record":
                records.append((int(parts[1]), int(parts[2]), parts[3], float(parts[4])))
            elif parts[0] == "commit":
                commits.append((int(parts[1]), int(parts[2]), float(parts[3])))
            elif parts[0] == "assigned":
                assigned.append([int(p) for p in parts[1:]])
    return records, commits, assigned


def group_checks(bootstrap, admin):
    topic = f"py-jobs-{uuid.uuid4().hex[:8]}"
    group = f"py-group-{uuid.uuid4().hex[:8]}"
    wait_for(admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)]), "create jobs")
    acked = produce(bootstrap, topic, 0, 600)
    work = tempfile.mkdtemp()
    stop = os.path.join(work, "stop")
    logs = [os.path.join(work, f"member-{i}.log") for i in range(3)]
    members = [
        subprocess.Popen([sys.executable, __file__, "--bootstrap", bootstrap, "--mode", "member",
                          "--group", group, "--topic", topic, "--out", logs[i], "--stop", stop,
                          "--index", str(i)])
        for i in range(3)
    ]
    # Wait until the victim has consumed and committed something.
    deadline = time.time() + 60
    while True:
        recs, commits, _ = read_log(logs[0])
        if len(recs) >= 30 and commits:
            break
        check(time.time() < deadline, "member 0 consumed and committed within 60 s")
        time.sleep(0.1)
    members[0].send_signal(signal.SIGKILL)
    members[0].wait()
    victim_records, _, _ = read_log(logs[0])
    victim_partitions = {r[0] for r in victim_records}
    acked.update(produce(bootstrap, topic, 600, 600))
    want = {v: po for v, po in acked.items()}
    deadline = time.time() + 90
    while True:
        seen = set()
        for log in logs:
            seen.update(r[2] for r in read_log(log)[0])
        if set(want) <= seen:
            break
        check(time.time() < deadline, f"every record consumed within 90 s ({len(set(want) - seen)} missing)")
        time.sleep(0.2)
    open(stop, "w").close()
    for m in members[1:]:
        check(m.wait(timeout=60) == 0, "surviving member exits cleanly")
    counts = collections.Counter()
    reads = []
    commits = collections.defaultdict(list)
    survivors_partitions = set()
    for i, log in enumerate(logs):
        recs, cs, _ = read_log(log)
        for p, o, v, t in recs:
            check(want[v] == (p, o), f"record {v} read at {p}/{o}, acknowledged at {want[v]}")
            counts[(p, o)] += 1
            reads.append((p, o, t))
            if i > 0:
                survivors_partitions.add(p)
        for p, o, t in cs:
            commits[p].append((t, o))
    check(len(counts) == len(want), "nothing lost")
    # Duplicates only after the last commit: no record is read after a
    # commit past it returned (the processes share one monotonic clock).
    for p, o, t in reads:
        for ct, co in commits[p]:
            check(not (ct < t and co > o), f"{p}/{o} read {t - ct:.3f} s after a commit of offset {co}")
    check(victim_partitions <= survivors_partitions, "the killed member's partitions moved to the others")
    duplicates = sum(n - 1 for n in counts.values())
    print(f"group: {len(want)} records; {duplicates} read again, each after the last commit of its partition")
    return topic, len(want)


def auto_commit_checks(bootstrap, topic, total):
    group = f"py-auto-{uuid.uuid4().hex[:8]}"
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": True, "auto.commit.interval.ms": 200})
    c.subscribe([topic])
    got = 0
    deadline = time.time() + 60
    while got < total:
        check(time.time() < deadline, f"auto-commit consumer read {got} of {total}")
        msg = c.poll(0.5)
        if msg is not None and not msg.error():
            got += 1
    parts = c.assignment()
    c.close()  # commits the final positions
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    committed = probe.committed([TopicPartition(topic, p.partition) for p in parts], timeout=10)
    ends = {}
    for tp in committed:
        _, high = probe.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=10)
        ends[tp.partition] = high
        check(tp.offset == high, f"partition {tp.partition}: committed {tp.offset}, end {high}")
    probe.close()
    check(sum(ends.values()) == total, "every partition committed at its end")


def kip848_checks(bootstrap, topic, total):
    """group.protocol=consumer (KIP-848): the server assigns; commits carry
    the member epoch."""
    group = f"py-848-{uuid.uuid4().hex[:8]}"
    members = [
        Consumer({"bootstrap.servers": bootstrap, "group.id": group, "group.protocol": "consumer",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "client.id": f"py-848-{i}"})
        for i in range(2)
    ]
    for m in members:
        m.subscribe([topic])
    seen = collections.Counter()
    deadline = time.time() + 60
    while True:
        owned = [{tp.partition for tp in m.assignment()} for m in members]
        if len(seen) >= total and all(owned) and len(owned[0] | owned[1]) == 6:
            break
        check(time.time() < deadline, f"KIP-848 members read {len(seen)} of {total}, own {owned}")
        for m in members:
            msg = m.poll(0.1)
            if msg is not None and not msg.error():
                seen[(msg.partition(), msg.offset())] += 1
    for m in members:
        m.commit(asynchronous=False)
    for m in members:
        m.close()
    check(len(seen) == total, "KIP-848 members read every record")
    check(all(owned) and not (owned[0] & owned[1]), f"the partitions were split between the members: {owned}")
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = [TopicPartition(topic, p) for p in range(6)]
    committed = sum(tp.offset for tp in probe.committed(parts, timeout=10) if tp.offset >= 0)
    probe.close()
    check(committed == total, f"KIP-848 commits cover every record ({committed} of {total})")


def share(args):
    """A KIP-848 member of a group that gRPC members are in too: prints the
    partitions it owns whenever they change, until --stop exists."""
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                  "group.protocol": "consumer", "auto.offset.reset": "earliest",
                  "client.id": "py-848-shared"})
    c.subscribe([args.topic])
    last = None
    while not os.path.exists(args.stop):
        c.poll(0.1)
        owned = sorted(tp.partition for tp in c.assignment())
        if owned != last:
            print("owned " + ",".join(map(str, owned)), flush=True)
            last = owned
    c.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--mode", default="test")
    ap.add_argument("--group")
    ap.add_argument("--topic")
    ap.add_argument("--out")
    ap.add_argument("--stop")
    ap.add_argument("--index", type=int, default=0)
    args = ap.parse_args()
    if args.mode == "member":
        member(args)
        return
    if args.mode == "share":
        share(args)
        return
    admin = admin_checks(args.bootstrap)
    topic, total = group_checks(args.bootstrap, admin)
    auto_commit_checks(args.bootstrap, topic, total)
    kip848_checks(args.bootstrap, topic, total)
    print("ok")


if __name__ == "__main__":
    main()
