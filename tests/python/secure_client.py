"""Sluice from Python over TLS with a bearer token: the README's example.

    .venv/bin/python tests/python/secure_client.py --broker localhost:9400 \
        --proto-dir proto --ca ca.crt --token "$SLUICE_TOKEN" --topic orders

Produces a record and fetches it back on a channel that trusts the CA that
signed the broker's certificate, sending the token with every call; then
checks that a call without the token is refused (UNAUTHENTICATED) and a
topic the token's principal has no ACL for is refused (PERMISSION_DENIED).
"""

import argparse
import sys

import grpc

import stubs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--broker", required=True)
    ap.add_argument("--proto-dir", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--forbidden-topic", default=None)
    a = ap.parse_args()
    pb, rpc, spb, srpc = stubs.generate(a.proto_dir, ("broker", "security"))

    with open(a.ca, "rb") as f:
        credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
    token = [("authorization", f"Bearer {a.token}")]
    with grpc.secure_channel(a.broker, credentials) as channel:
        broker = rpc.BrokerStub(channel)
        me = srpc.SecurityStub(channel).WhoAmI(spb.WhoAmIRequest(), metadata=token)
        print(f"authenticated as {me.principal} over TLS: {me.tls}")
        assert me.tls, "the call did not come over TLS"

        reply = broker.Produce(
            pb.ProduceRequest(
                topic=a.topic,
                partition=0,
                records=[pb.ProduceRecord(key=b"k", value=b"hello over TLS")],
            ),
            metadata=token,
        )
        offset = reply.partitions[0].base_offset
        fetched = broker.Fetch(
            pb.FetchRequest(topic=a.topic, partition=0, offset=offset, max_records=1),
            metadata=token,
        )
        assert fetched.records[0].value == b"hello over TLS", fetched

        try:
            broker.Fetch(pb.FetchRequest(topic=a.topic, partition=0, max_records=1))
            sys.exit("a call without a token was answered")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e

        if a.forbidden_topic:
            try:
                broker.Fetch(
                    pb.FetchRequest(topic=a.forbidden_topic, partition=0, max_records=1),
                    metadata=token,
                )
                sys.exit("a topic without an ACL was readable")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.PERMISSION_DENIED, e
                print(f"refused as expected: {e.details()}")
    print("ok")


if __name__ == "__main__":
    main()
