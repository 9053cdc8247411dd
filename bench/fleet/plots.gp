# The plots of docs/scaling.md, from DATA/fleet-figures.dat (bench/fleet/report
# writes it): columns N, start_s, rest_rate, rest_floor, prop_agent_p99_ms,
# prop_direct_p99_ms, agent_member_rss_per_agent_kb, tls_prop_agent_p99_ms,
# kill_reattach_s, down_whole_s.
if (!exists("datadir")) datadir = "build/bench"
if (!exists("outdir")) outdir = "docs"
f = datadir."/fleet-figures.dat"

set terminal pngcairo size 900,540 noenhanced font "sans,11"
set grid
set key top left
set xlabel "agents (N)"
set logscale x
set yrange [0:*]

set output outdir."/scaling-rest.png"
set title "etcd's request rate at rest (all members) against the keep-alive floor"
set ylabel "requests per second"
plot f using 1:3 with linespoints lw 2 title "measured", \
     f using 1:4 with lines lw 2 dt 2 title "floor: N keep-alives per TTL/3"

set output outdir."/scaling-propagation.png"
set title "A change of the most watched service, p99 of the deliveries"
set ylabel "ms from the put"
plot f using 1:5 with linespoints lw 2 title "agents' socket watchers", \
     f using 1:6 with linespoints lw 2 dt 2 title "direct gateway watches (same count)", \
     f using 1:8 with linespoints lw 2 title "agents, etcd over TLS"

set output outdir."/scaling-memory.png"
set title "etcd members' resident memory over the baseline, per attached agent"
set ylabel "KiB per agent (3 members together)"
plot f using 1:7 with linespoints lw 2 title "per agent"
