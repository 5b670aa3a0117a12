"""Holds an idle gRPC channel to the broker, as a Python service does
between calls: connects, prints "ready", then waits for stdin to
close."""

import sys

import grpc


def main() -> None:
    channel = grpc.insecure_channel(sys.argv[1])
    # Connected (HTTP/2 set up), with no call in flight.
    grpc.channel_ready_future(channel).result(timeout=30)
    print("ready", flush=True)
    sys.stdin.read()
    channel.close()


if __name__ == "__main__":
    main()
