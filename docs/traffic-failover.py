#!/usr/bin/python3
"""Draws docs/traffic-failover.svg: zone a failing over to zone b.

    python3 docs/traffic-failover.py > docs/traffic-failover.svg

The agent is in zone a; zones a and b (region r1) and c (region r2) have
three instances each. Zone a's servers stop one by one, then come back.
Each step's share of traffic is computed with the rule of agent/policy.c
(policy_loads): health = min(1, 1.4 x instances / recent size), zone a
takes its health, the region the rest, then the others; so the picture is
the documented rule, not a drawing of it. No dependencies but python3.
"""

FACTOR = 1.4


def loads(count, recent):
    left, out = 1.0, []
    for c, r in zip(count, recent):
        health = min(1.0, FACTOR * c / max(r, c)) if c and r else 0.0
        load = min(health, left)
        left -= load
        out.append(load)
    total = sum(out)
    if 0 < total < 1:
        out = [x / total for x in out]
    return out


# (label, instances in zone a) at each step; b and c keep three.
steps = [("a: 3/3", 3), ("a: 2/3", 2), ("a: 1/3", 1), ("a: 0/3", 0),
         ("a: 1/3", 1), ("a: 2/3", 2), ("a: 3/3", 3)]
colors = ["#2b7bba", "#f0a030", "#999999"]
names = ["zone a (priority 0)", "zone b, same region", "zone c, other region"]

W, H, L, T, B = 640, 300, 60, 40, 60
pw, ph = W - L - 170, H - T - B
bw = pw / len(steps)
out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
       'font-family="sans-serif" font-size="12">' % (W, H),
       '<rect width="100%" height="100%" fill="white"/>',
       '<text x="%d" y="20" font-size="14">Share of calls from a client in zone a '
       '(overprovisioning 1.4)</text>' % L]
for i, (label, a) in enumerate(steps):
    share = loads([a, 3, 3], [3, 3, 3])
    y = T + ph
    for k, s in enumerate(share):
        h = s * ph
        y -= h
        out.append('<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%s"/>'
                   % (L + i * bw + 4, y, bw - 8, h, colors[k]))
        if s >= 0.06:
            out.append('<text x="%.1f" y="%.1f" text-anchor="middle" fill="white">%d%%</text>'
                       % (L + i * bw + bw / 2, y + h / 2 + 4, round(100 * s)))
    out.append('<text x="%.1f" y="%d" text-anchor="middle">%s</text>'
               % (L + i * bw + bw / 2, T + ph + 18, label))
out.append('<text x="%.1f" y="%d" text-anchor="middle">zone a\'s servers stop one by '
           'one, then come back</text>' % (L + pw / 2, T + ph + 42))
for p in (0, 50, 100):
    y = T + ph - p / 100 * ph
    out.append('<text x="%d" y="%.1f" text-anchor="end">%d%%</text>' % (L - 6, y + 4, p))
for k, n in enumerate(names):
    out.append('<rect x="%d" y="%d" width="12" height="12" fill="%s"/>'
               % (L + pw + 16, T + 10 + 22 * k, colors[k]))
    out.append('<text x="%d" y="%d">%s</text>' % (L + pw + 34, T + 21 + 22 * k, n))
out.append('</svg>')
print("\n".join(out))
