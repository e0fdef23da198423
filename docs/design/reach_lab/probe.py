"""Tiny TCP probes for the NAT lab (stdlib only).
serve PORT                       accept, print the peer's ip:port, reply it, repeat
connect HOST PORT [SRCPORT]      connect (optionally from SRCPORT), print what the server saw
simopen SRCPORT HOST PORT START  at time START (epoch s), dial HOST:PORT from SRCPORT while a SO_REUSEPORT
                                 listener also holds SRCPORT (as libp2p does); retry for 6 s; print result
"""
import socket, sys, time

def reuse(s):
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)

cmd = sys.argv[1]
if cmd == "serve":
    ls = socket.socket(); reuse(ls); ls.bind(("0.0.0.0", int(sys.argv[2]))); ls.listen()
    while True:
        c, peer = ls.accept(); print("seen", peer, flush=True); c.sendall(f"{peer[0]}:{peer[1]}\n".encode()); c.close()
elif cmd == "connect":
    s = socket.socket(); reuse(s); s.settimeout(3)
    if len(sys.argv) > 4: s.bind(("0.0.0.0", int(sys.argv[4])))
    try:
        s.connect((sys.argv[2], int(sys.argv[3]))); print("server saw", s.recv(100).decode().strip())
    except OSError as e: print("connect failed:", type(e).__name__, e)
elif cmd == "simopen":
    sport, host, port, start = int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    ls = socket.socket(); reuse(ls); ls.bind(("0.0.0.0", sport)); ls.listen()
    time.sleep(max(0, start - time.time()))
    deadline = time.time() + 6; t0 = time.time()
    while time.time() < deadline:
        s = socket.socket(); reuse(s); s.bind(("0.0.0.0", sport)); s.settimeout(deadline - time.time())
        try:
            s.connect((host, port)); print(f"OK after {time.time()-t0:.2f}s local={s.getsockname()} peer={s.getpeername()}"); sys.exit(0)
        except OSError as e:
            err = f"{type(e).__name__} {e}"; s.close(); time.sleep(0.2)
    print("FAILED", err)
