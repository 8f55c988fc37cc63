"""Asks a Kafka broker for the cluster's metadata and prints the brokers it
lists, one `id host:port` a line. Exits 1 when the broker does not answer.

scripts/lib.sh waits for a broker with this: a broker that answers a
metadata request with itself in the list is one that clients can use, which
an open port alone does not say. Python's standard library only, so it runs
before anything is built.

Usage: python3 metadata.py HOST:PORT [TIMEOUT_SECONDS]
"""

import socket
import struct
import sys

# Metadata v4: the oldest version Kafka 4 still serves, and a non-flexible
# one, so its encoding is plain fixed-width fields.
METADATA_KEY, METADATA_VERSION = 3, 4


def request(host, port, timeout):
    client_id = b"herald-scripts"
    header = struct.pack(">hhih", METADATA_KEY, METADATA_VERSION, 1, len(client_id)) + client_id
    # No topics (an empty array, not null, which would mean all of them),
    # and no auto-creation.
    body = struct.pack(">ib", 0, 0)
    message = header + body
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(message)) + message)
        size = struct.unpack(">i", read_exactly(sock, 4))[0]
        return read_exactly(sock, size)


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("broker closed the connection")
        data += chunk
    return data


def brokers(response):
    # correlation id, throttle time, then the brokers array.
    offset = 8
    (count,) = struct.unpack_from(">i", response, offset)
    offset += 4
    listed = []
    for _ in range(count):
        node_id, host_len = struct.unpack_from(">ih", response, offset)
        offset += 6
        host = response[offset : offset + host_len].decode()
        offset += host_len
        (port, rack_len) = struct.unpack_from(">ih", response, offset)
        offset += 6 + max(rack_len, 0)
        listed.append((node_id, f"{host}:{port}"))
    return listed


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    try:
        listed = brokers(request(host, int(port), timeout))
    except (OSError, ConnectionError, struct.error) as err:
        print(f"no metadata from {sys.argv[1]}: {err}", file=sys.stderr)
        return 1
    for node_id, address in listed:
        print(node_id, address)
    return 0 if listed else 1


if __name__ == "__main__":
    sys.exit(main())
