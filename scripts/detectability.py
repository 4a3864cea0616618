#!/usr/bin/env python3
"""What a network observer learns of a braid run from a packet capture (docs/governance.md).

Reads a pcap of loopback TCP traffic (tcpdump -i lo -w FILE tcp) and, seeing only packet
sizes, directions and times (the payload is Noise-encrypted), groups each connection's
packets into bursts (a run of packets one way with no gap over GAP seconds), keeps the large
bursts (at least a tenth of the largest), and infers:
- the number of rounds: the median count of large bursts one way per connection;
- the model size: the median large burst's bytes / 4 (f32 parameters), against the truth,
  and the classes of large bursts of about one size (a message kind each);
- the round period: the median time between a connection's large bursts.
Prints one JSON object. Standard library only.

usage: detectability.py CAPTURE.pcap --params N --rounds R [--gap S]
"""
import argparse
import json
import statistics
import struct
import sys


def packets(path):
    """(time, src, sport, dst, dport, tcp payload bytes) of each IPv4 TCP packet."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 24:
        sys.exit(f"{path}: not a pcap file")
    magic = struct.unpack("<I", data[:4])[0]
    endian = {0xA1B2C3D4: "<", 0xD4C3B2A1: ">", 0xA1B23C4D: "<", 0x4D3CB2A1: ">"}.get(magic)
    if endian is None:
        sys.exit(f"{path}: not a pcap file (magic {magic:#x})")
    nano = magic in (0xA1B23C4D, 0x4D3CB2A1)
    link = struct.unpack(endian + "I", data[20:24])[0]
    skip = {1: 14, 113: 16, 276: 20, 0: 4}.get(link)
    if skip is None:
        sys.exit(f"{path}: link type {link} not handled")
    at = 24
    while at + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack(endian + "IIII", data[at : at + 16])
        frame = data[at + 16 : at + 16 + caplen]
        at += 16 + caplen
        t = sec + frac / (1e9 if nano else 1e6)
        ip = frame[skip:]
        if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
            continue
        ihl = (ip[0] & 15) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        tcp = ip[ihl:]
        if len(tcp) < 20:
            continue
        sport, dport = struct.unpack(">HH", tcp[:4])
        thl = (tcp[12] >> 4) * 4
        payload = total - ihl - thl
        if payload > 0:
            yield t, ip[12:16], sport, ip[16:20], dport, payload


def bursts(pkts, gap):
    """Per connection and direction: [(start time, bytes)] of its bursts."""
    flows = {}
    for t, src, sp, dst, dp, n in pkts:
        key = (src, sp, dst, dp)
        runs = flows.setdefault(key, [])
        if runs and t - runs[-1][2] <= gap:
            runs[-1][1] += n
            runs[-1][2] = t
        else:
            runs.append([t, n, t])
    return {k: [(r[0], r[1]) for r in v] for k, v in flows.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("capture")
    ap.add_argument("--params", type=int, required=True, help="the model's true parameter count")
    ap.add_argument("--rounds", type=int, required=True, help="the run's true number of rounds")
    ap.add_argument("--gap", type=float, default=0.02)
    a = ap.parse_args()
    flows = bursts(list(packets(a.capture)), a.gap)
    if not flows:
        sys.exit(f"{a.capture}: no TCP payload")
    largest = max(b for runs in flows.values() for _, b in runs)
    large = {k: [(t, b) for t, b in runs if b >= largest / 10] for k, runs in flows.items()}
    large = {k: v for k, v in large.items() if v}
    counts = [len(v) for v in large.values()]
    sizes = [b for v in large.values() for _, b in v]
    periods = [v[i + 1][0] - v[i][0] for v in large.values() for i in range(len(v) - 1)]
    total = sum(b for runs in flows.values() for _, b in runs)
    # Large bursts of about the same size (within 2%): one kind of message each.
    classes = []
    for b in sorted(sizes):
        if classes and b <= classes[-1][0] * 1.02:
            classes[-1][1] += 1
        else:
            classes.append([b, 1])
    inferred_params = statistics.median(sizes) / 4
    out = {
        "connections_one_way": len(flows),
        "with_large_bursts": len(large),
        "payload_bytes": total,
        "largest_burst_bytes": largest,
        "large_bursts_per_direction": sorted(counts),
        "inferred_rounds": statistics.median(counts),
        "true_rounds": a.rounds,
        "median_large_burst_bytes": statistics.median(sizes),
        "inferred_params": round(inferred_params),
        "true_params": a.params,
        "params_error": round(inferred_params / a.params - 1, 4),
        "size_classes": [
            {"bytes": b, "bursts": n, "bytes_over_4": round(b / 4)} for b, n in classes
        ],
        "median_round_period_s": round(statistics.median(periods), 3) if periods else None,
        "burst_sizes_by_direction": {
            f"{k[1]}->{k[3]}": [b for _, b in v] for k, v in sorted(large.items(), key=lambda kv: kv[0][1])
        },
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
