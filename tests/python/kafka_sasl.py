"""confluent-kafka over SASL/SCRAM and TLS against a secured Sluice broker.

Usage: kafka_sasl.py BOOTSTRAP CA_FILE USER PASSWORD MECHANISM TOPIC GROUP

Produces 100 keyed records with an idempotent acks=all producer, reads them
back as a member of GROUP, commits, and checks every record came back
unchanged; then checks that a wrong password is refused. Prints one JSON
line with what it saw; exits non-zero on any failure.
"""

import json
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient


def config(bootstrap, ca, user, password, mechanism):
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": ca,
    }


def main():
    bootstrap, ca, user, password, mechanism, topic, group = sys.argv[1:8]
    base = config(bootstrap, ca, user, password, mechanism)

    errors = []
    producer = Producer(dict(base, **{"enable.idempotence": True, "acks": "all"}))

    def delivered(err, _msg):
        if err is not None:
            errors.append(str(err))

    sent = {}
    for i in range(100):
        key, value = f"k{i}", f"v{i}"
        sent[key] = value
        producer.produce(topic, key=key, value=value, on_delivery=delivered)
    left = producer.flush(30)
    if left or errors:
        raise SystemExit(f"produce failed: {left} unsent, errors {errors[:3]}")

    consumer = Consumer(
        dict(
            base,
            **{
                "group.id": group,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([topic])
    got = {}
    deadline = time.time() + 60
    def complete():
        return all(got.get(k) == v for k, v in sent.items())

    # The topic may hold other records already: every one sent must come back.
    while not complete() and time.time() < deadline:
        m = consumer.poll(1.0)
        if m is None:
            continue
        if m.error():
            raise SystemExit(f"consume failed: {m.error()}")
        got[m.key().decode()] = m.value().decode()
    consumer.commit(asynchronous=False)
    consumer.close()
    if not complete():
        missing = [k for k, v in sent.items() if got.get(k) != v]
        raise SystemExit(f"{len(missing)} of {len(sent)} records missing or changed: {missing[:5]}")

    # A wrong password: the client reports an authentication failure, and
    # gets no metadata.
    auth_errors = []

    def on_error(err):
        if err.code() == KafkaError._AUTHENTICATION:
            auth_errors.append(str(err))

    bad = AdminClient(
        dict(config(bootstrap, ca, user, password + "x", mechanism), error_cb=on_error)
    )
    listed = False
    try:
        bad.list_topics(timeout=5)
        listed = True
    except KafkaException:
        pass
    deadline = time.time() + 10
    while not auth_errors and time.time() < deadline:
        bad.poll(0.5)  # error callbacks are served by poll
    refused = bool(auth_errors) and not listed
    if not refused:
        raise SystemExit(f"a wrong password was not refused (listed={listed}, errors={auth_errors})")
    print(json.dumps({"produced": len(sent), "consumed": len(got), "wrong_password_refused": refused}))


if __name__ == "__main__":
    main()
