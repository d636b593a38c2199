"""A WebSocket echo server on 127.0.0.1:PORT (stdlib only): answers the
upgrade, then sends every text or binary message back unmasked."""
import base64
import hashlib
import socket
import sys
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def serve(conn):
    try:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        key = next(l.split(b":", 1)[1].strip() for l in head.split(b"\r\n") if l.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        buf = b""
        while True:
            while len(buf) < 2:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            opcode, length = buf[0] & 0x0F, buf[1] & 0x7F
            offset = 2
            if length == 126:
                length, offset = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                length, offset = int.from_bytes(buf[2:10], "big"), 10
            masked = buf[1] & 0x80
            need = offset + (4 if masked else 0) + length
            while len(buf) < need:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
            mask = buf[offset:offset + 4] if masked else b"\0\0\0\0"
            start = offset + (4 if masked else 0)
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buf[start:need]))
            buf = buf[need:]
            if opcode == 8:
                return
            if opcode in (1, 2) and length < 126:
                conn.sendall(bytes([0x80 | opcode, length]) + payload)
    except OSError:
        pass
    finally:
        conn.close()


listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", int(sys.argv[1])))
listener.listen(512)
while True:
    conn, _ = listener.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
