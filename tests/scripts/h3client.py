#!/usr/bin/env python3
"""An HTTP/3 client built on aioquic, independent of edgelb's own QUIC stack (quinn).

Sends one request per PATH over one QUIC connection and prints one JSON line per response:
{"status": 200, "headers": [["name", "value"], ...], "body": "..."}. Exits 2 when the
connection cannot be made (the reason on stderr), 3 when a request gets no response, 4
when --big-frame's request stream is not stopped.
"""
import argparse
import asyncio
import json
import contextlib
import ipaddress
import socket
import ssl
import sys

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import encode_uint_var
from aioquic.h3.connection import H3_ALPN, H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StopSendingReceived, StreamReset


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.http = H3Connection(self._quic)
        self.waiting = {}
        self.responses = {}
        self.terminated = None
        self.stopped = {}

    def quic_event_received(self, event):
        if isinstance(event, StopSendingReceived):
            self.stopped[event.stream_id] = event.error_code
        if isinstance(event, ConnectionTerminated):
            self.terminated = event
            for fut in self.waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"connection closed: {event.reason_phrase!r} code {event.error_code}"))
        if isinstance(event, StreamReset) and event.stream_id in self.waiting:
            fut = self.waiting[event.stream_id]
            if not fut.done():
                fut.set_exception(ConnectionError(f"stream reset: code {event.error_code}"))
        for ev in self.http.handle_event(event):
            if isinstance(ev, HeadersReceived):
                resp = self.responses.setdefault(ev.stream_id, {"headers": [], "body": b""})
                resp["headers"].extend((k.decode(), v.decode()) for k, v in ev.headers)
            elif isinstance(ev, DataReceived):
                resp = self.responses.setdefault(ev.stream_id, {"headers": [], "body": b""})
                resp["body"] += ev.data
            else:
                continue
            if ev.stream_ended and ev.stream_id in self.waiting:
                fut = self.waiting[ev.stream_id]
                if not fut.done():
                    fut.set_result(self.responses.pop(ev.stream_id))

    async def big_frame(self, where, n):
        """Sends a frame of a reserved type declaring 1 GiB, and `n` bytes of it, on the control
        stream or on a request stream of its own; for the latter, True when the server stopped
        that stream with H3_EXCESSIVE_LOAD within a second."""
        frame = encode_uint_var(0x21) + encode_uint_var(1 << 30) + bytes(n)
        if where == "control":
            sid = self.http._local_control_stream_id
        else:
            sid = self._quic.get_next_available_stream_id()
        self._quic.send_stream_data(sid, frame)
        self.transmit()
        for _ in range(20):
            await asyncio.sleep(0.05)
            if self.stopped.get(sid) == 0x107:
                return True
        return False

    async def bare_streams(self, n, every):
        """Opens `n` request streams, `every` seconds apart, each with the first byte of a
        HEADERS frame and nothing more: streams that never get a head."""
        for _ in range(n):
            sid = self._quic.get_next_available_stream_id()
            self._quic.send_stream_data(sid, b"\x01")
            self.transmit()
            await asyncio.sleep(every)

    async def request(self, method, authority, path, body, headers, length=None):
        stream_id = self._quic.get_next_available_stream_id()
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ] + [(k.encode(), v.encode()) for k, v in headers]
        if length is not None:
            fields.append((b"content-length", str(length).encode()))
        elif body is not None:
            fields.append((b"content-length", str(len(body)).encode()))
        fut = asyncio.get_running_loop().create_future()
        self.waiting[stream_id] = fut
        self.http.send_headers(stream_id, fields, end_stream=body is None)
        if body is not None:
            self.http.send_data(stream_id, body, end_stream=True)
        self.transmit()
        return await fut


@contextlib.asynccontextmanager
async def connect(host, port, configuration, bind):
    """As aioquic's own `connect`, with the socket bound to `bind` (the source address) when
    given: tests pick which of a namespace's addresses the client comes from."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((bind or ("::" if family == socket.AF_INET6 else "0.0.0.0"), 0))
    except OSError:
        sock.close()
        raise
    connection = QuicConnection(configuration=configuration)
    transport, protocol = await loop.create_datagram_endpoint(lambda: Client(connection), sock=sock)
    try:
        protocol.connect((host, port))
        await protocol.wait_connected()
        yield protocol
    finally:
        protocol.close()
        await protocol.wait_closed()
        transport.close()


async def staggered(client, args, authority):
    """Sends the requests together, each `--stagger` seconds after the one before, and prints
    one line per path in order; a request that fails is a line with status 0 and the reason."""

    async def one(i, path):
        await asyncio.sleep(i * args.stagger)
        try:
            resp = await asyncio.wait_for(client.request(args.method, authority, path, None, []), args.timeout)
        except (ConnectionError, asyncio.TimeoutError) as e:
            return {"status": 0, "headers": [], "body": str(e) or "timed out"}
        status = next((int(v) for k, v in resp["headers"] if k == ":status"), 0)
        return {
            "status": status,
            "headers": [[k, v] for k, v in resp["headers"] if not k.startswith(":")],
            "body": resp["body"].decode(errors="replace"),
        }

    for out in await asyncio.gather(*(one(i, p) for i, p in enumerate(args.paths))):
        print(json.dumps(out), flush=True)
    return 0


async def run(args):
    config = QuicConfiguration(is_client=True, alpn_protocols=H3_ALPN)
    config.server_name = args.server_name
    config.load_verify_locations(args.ca)
    config.verify_mode = ssl.CERT_REQUIRED
    config.idle_timeout = args.timeout
    if args.cert:
        config.load_cert_chain(args.cert, args.key)
    authority = args.authority or args.server_name
    try:
        async with connect(args.host, args.port, config, args.bind) as client:
            if args.big_frame:
                where, n = args.big_frame.split(":")
                stopped = await client.big_frame(where, int(n))
                if where == "request" and not stopped:
                    print("the server did not stop the stream with the large frame", file=sys.stderr)
                    return 4
            if args.bare_streams:
                await client.bare_streams(args.bare_streams, 0.8)
            if args.stagger is not None:
                return await staggered(client, args, authority)
            for path in args.paths:
                body = args.data.encode() if args.data is not None else None
                headers = [tuple(h.split(":", 1)) for h in args.header]
                try:
                    resp = await asyncio.wait_for(
                        client.request(args.method, authority, path, body, headers, args.content_length),
                        args.timeout,
                    )
                except (ConnectionError, asyncio.TimeoutError) as e:
                    print(f"request {path}: {e or 'timed out'}", file=sys.stderr)
                    return 3
                status = next((int(v) for k, v in resp["headers"] if k == ":status"), 0)
                out = {
                    "status": status,
                    "headers": [[k, v] for k, v in resp["headers"] if not k.startswith(":")],
                    "body": resp["body"].decode(errors="replace"),
                }
                print(json.dumps(out), flush=True)
                if args.pause:
                    await asyncio.sleep(args.pause)
    except ConnectionError as e:
        print(f"connection: refused or closed: {e!r}", file=sys.stderr)
        return 2
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("paths", nargs="+")
    p.add_argument("--server-name", default="edgelb.test")
    p.add_argument("--authority")
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--bind", help="source address")
    p.add_argument("--method", default="GET")
    p.add_argument("--data")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--content-length", type=int, help="declare this length, whatever the body's")
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--pause", type=float, default=0.0, help="seconds between requests")
    p.add_argument("--bare-streams", type=int, metavar="N",
                   help="first open N streams 0.8 s apart that never get a request head")
    p.add_argument("--stagger", type=float,
                   help="send the requests together, this many seconds apart; a failed one is printed with status 0")
    p.add_argument("--big-frame", metavar="control|request:N",
                   help="first send N bytes of a frame declaring 1 GiB on the control stream, or on a "
                   "request stream of its own (exit 4 unless the server stops that stream)")
    args = p.parse_args()
    try:
        budget = args.timeout * (len(args.paths) + 2) + args.pause * len(args.paths) + 0.8 * (args.bare_streams or 0)
        code = asyncio.run(asyncio.wait_for(run(args), budget))
    except asyncio.TimeoutError:
        print("connection: timed out", file=sys.stderr)
        code = 2
    except Exception as e:  # a handshake refused surfaces as various errors
        print(f"connection: {type(e).__name__}: {e}", file=sys.stderr)
        code = 2
    sys.exit(code)


if __name__ == "__main__":
    main()
