# The report's plots, from the data `bench` writes (make bench runs this):
#   gnuplot -e "datadir='build/bench'; outdir='docs'" bench/plots.gp
# Latency files hold "percentile value" rows (samples_write_quantiles): the
# x axis is 1/(1-q) on a log scale, so 90, 99, 99.9 and 99.99 sit equally
# apart and the tail is as readable as the median.
if (!exists("datadir")) datadir = "build/bench"
if (!exists("outdir")) outdir = "docs"

set terminal pngcairo size 900,540 noenhanced font "sans,11"
set grid
set key top left
set logscale x
set xtics ("0" 1, "50" 2, "90" 10, "99" 100, "99.9" 1000, "99.99" 10000)
set xlabel "percentile"
tail(q) = 1.0 / (1.0 - q / 100.0)

set output outdir."/resolve-latency.png"
set title "Resolve round trip, one client, client and server on one CPU, against a bare unix-socket ping-pong"
set ylabel "round trip (µs)"
set logscale y
plot datadir."/resolve-agent.dat" using (tail($1)):2 with lines lw 2 title "resolve through the agent", \
     datadir."/resolve-floor.dat" using (tail($1)):2 with lines lw 2 dt 2 title "floor: bare socket, same sizes"

set output outdir."/propagation.png"
set title "From the writer's put or delete to the change seen"
set ylabel "delay (ms)"
plot datadir."/prop-agent.dat" using (tail($1)):($2/1000) with lines lw 2 title "update line at a socket watcher", \
     datadir."/prop-floor.dat" using (tail($1)):($2/1000) with lines lw 2 dt 2 title "floor: direct watch on etcd's gateway", \
     datadir."/prop-grpc.dat" using (tail($1)):($2/1000) with linespoints lw 2 title "first gRPC call served by the new instance"

set output outdir."/memory.png"
set title "Agent memory against watched instances (10 per service, one watch each)"
unset logscale
set xtics auto
set xlabel "watched instances"
set ylabel "MB"
set key top left
set yrange [0:*]
plot datadir."/memory.dat" using 1:2 with linespoints lw 2 title "VmRSS (what the goal counts)", \
     datadir."/memory.dat" using 1:4 with linespoints lw 2 title "RssAnon (the agent's own pages)", \
     datadir."/memory.dat" using 1:3 with lines lw 2 dt 2 title "floor: VmRSS with none + the keys and values", \
     20 with lines lw 1 dt 3 lc rgb "red" title "goal: 20 MB at 10,000"
